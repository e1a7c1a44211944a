"""TensorRT and pycuda imports, and the one CUDA context both of them use.

TensorRT works in the device's primary context (it uses the CUDA runtime API). `pycuda.autoinit` would make a second,
non-primary context, so calibration buffers and runner buffers would live in another context than the builder and the
engine. Here pycuda retains and pushes the primary context before any TensorRT object exists, and every TensorRT and
pycuda object made inside `cuda_scope` is dropped, newest first, before that context is popped: objects still alive
after the pop log deallocation errors at exit.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

from ..errors import YoloPruneError

# the range this code is written and checked against; TensorRT 11 builds FP32 only (no FP16/INT8 builder flags)
SUPPORTED_TENSORRT = ((8, 5), (11, 99))


def import_tensorrt():
    """The `tensorrt` module, or one error saying how to get it (with the import's own message)."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise YoloPruneError(
            f"TensorRT cannot be imported ({e}): building and timing .engine files needs a CUDA machine with "
            "TensorRT and pycuda (pip install 'yolo-prune[tensorrt]'). ONNX export works without it."
        ) from None
    check_tensorrt_version(trt.__version__)
    return trt


def import_pycuda():
    """pycuda's driver module (no context made yet), or one error with the import's own message."""
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        raise YoloPruneError(
            f"pycuda cannot be imported ({e}): INT8 calibration and TensorRT timing need it (pip install pycuda on "
            "the CUDA machine; a numpy 'API version' error means it was built against another numpy: reinstall it "
            "with pip install --no-build-isolation --force-reinstall pycuda)."
        ) from None
    return cuda


def tensorrt_major(trt) -> int:
    return version_tuple(trt.__version__)[0]


def version_tuple(version: str) -> tuple[int, int]:
    major, minor = (version.split(".") + ["0"])[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def check_tensorrt_version(version: str):
    """One error for a TensorRT outside the supported range (an older parser lacks our ops, a newer API differs)."""
    low, high = SUPPORTED_TENSORRT
    if not low <= version_tuple(version) <= high:
        raise YoloPruneError(
            f"TensorRT {version} is not supported: use TensorRT 8.5 to 11.x (JetPack 5 has 8.5)."
        )


@contextmanager
def cuda_scope(device: int = 0):
    """(pycuda.driver, scope) with device `device`'s primary context current; objects put on `scope` as attributes
    are dropped, newest first, before the context is popped, also when the block raises."""
    cuda = import_pycuda()
    cuda.init()
    context = cuda.Device(device).retain_primary_context()
    context.push()
    scope = SimpleNamespace()
    try:
        yield cuda, scope
    finally:
        release(scope)
        context.pop()


def release(scope: SimpleNamespace):
    """Drop the attributes of `scope` newest first: an execution context before its engine, an engine before its
    runtime, a calibrator's device buffer before the context it was allocated in."""
    for name in reversed(list(vars(scope))):
        delattr(scope, name)
