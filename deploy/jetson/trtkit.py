"""TensorRT and pycuda plumbing of the kit: imports with their real errors, the shared CUDA context, and the plain
decisions around TensorRT (batches, copy sizes, profiles, the FP32 decode tail, the calibration cache key).

Standalone on purpose (Python 3.8, numpy only): the kit cannot import yolo-prune, so this re-implements what
yolo-prune's export/calibration.py, export/trt_plan.py and export/cuda.py do, with the same cache key so a
calibration cache moves between the host and the device with its ONNX. Everything here except `import_*` and
`cuda_scope` runs without TensorRT, and the host tests check it.
"""

import hashlib
import json
import os
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

CALIBRATOR = "EntropyCalibration2"
SUPPORTED = ((8, 5), (11, 99))  # TensorRT 8.5 (JetPack 5) to 11; 11 builds FP32 only


# ------------------------------------------------------------------------------------------------------ imports


def import_hint(module: str, message: str) -> str:
    """What to do about a failed import of `module` ("tensorrt" or "pycuda"), given the import's own message."""
    numpy_mismatch = "API version" in message or "numpy" in message.lower()
    if module == "tensorrt":
        if numpy_mismatch:
            return ("JetPack's TensorRT bindings need JetPack's numpy (python3-numpy): remove a pip-installed numpy "
                    "with `python3 -m pip uninstall numpy`")  # fmt: skip
        return "TensorRT's Python bindings come with JetPack (`sudo apt-get install python3-libnvinfer`)"
    if numpy_mismatch:
        return ("pycuda was compiled against another numpy than the installed one: rebuild it against this one with "
                "`python3 -m pip install --user --no-build-isolation --force-reinstall --no-deps pycuda` "
                "(README, section 2)")  # fmt: skip
    if "libcuda" in message or "cuda.h" in message:
        return "pycuda cannot find CUDA: put /usr/local/cuda/bin on PATH and reinstall it (README, section 2)"
    return "install pycuda as the README says (section 2)"


def import_tensorrt_and_pycuda():
    """(tensorrt, pycuda.driver), no context made yet; exit with the real import error and what to do about it."""
    try:
        import tensorrt as trt
    except (ImportError, OSError, RuntimeError) as e:
        raise SystemExit(_failed("tensorrt", e)) from None
    try:
        import pycuda.driver as cuda
    except (ImportError, OSError, RuntimeError) as e:
        raise SystemExit(_failed("pycuda", e)) from None
    check_version(trt.__version__)
    return trt, cuda


def _failed(module: str, error: Exception) -> str:
    return "cannot import %s: %s\n-> %s. Without a GPU, pass an .onnx model instead." % (
        module, error, import_hint(module, str(error)))


def version_tuple(version: str) -> Tuple[int, int]:
    major, minor = (version.split(".") + ["0"])[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def check_version(version: str):
    if not SUPPORTED[0] <= version_tuple(version) <= SUPPORTED[1]:
        raise SystemExit("TensorRT %s is not supported: the kit runs TensorRT 8.5 to 11.x" % version)


@contextmanager
def cuda_scope(cuda, device: int = 0):
    """A scope object for TensorRT/pycuda objects, with the device's primary context current (the context TensorRT
    itself uses; pycuda.autoinit would make a second one). Its attributes are dropped newest first before the
    context is popped, so nothing CUDA outlives it."""
    cuda.init()
    context = cuda.Device(device).retain_primary_context()
    context.push()
    scope = SimpleNamespace()
    try:
        yield scope
    finally:
        for name in reversed(list(vars(scope))):
            delattr(scope, name)
        context.pop()


# ------------------------------------------------------------------------------------------------ batch and copy


def run_batch(requested: Optional[int], shape: Sequence[int], profile: Optional[Sequence[Sequence[int]]]) -> int:
    """The batch an engine runs: its own when fixed (a different request is an error), else the request (default
    the profile's largest) when the profile allows it."""
    if shape[0] > 0:
        if requested not in (None, shape[0]):
            raise SystemExit("the engine has a fixed batch of %d; pass --batch %d or none" % (shape[0], shape[0]))
        return int(shape[0])
    low, high = int(profile[0][0]), int(profile[2][0])
    batch = high if requested is None else requested
    if not low <= batch <= high:
        raise SystemExit("the engine runs batches %d to %d; --batch %d is outside" % (low, high, batch))
    return batch


def used_elements(shape: Sequence[int], n: int) -> int:
    """Elements of the first `n` images of a (B, ...) tensor: what is copied in or out for a batch of `n`."""
    count = n
    for d in shape[1:]:
        count *= int(d)
    return count


def optimization_profile(batch: int, imgsz) -> Tuple[Tuple[int, ...], ...]:
    """(min, opt, max) of a dynamic batch up to `batch`, tuned at `batch` (the batch benchmark.py times)."""
    h, w = imgsz
    return (1, 3, h, w), (batch, 3, h, w), (batch, 3, h, w)


def calibration_profile(batch: int, imgsz) -> Tuple[Tuple[int, ...], ...]:
    """(min, opt, max) of the INT8 calibration profile: all the calibration batch (TensorRT calibrates at opt)."""
    h, w = imgsz
    shape = (batch, 3, h, w)
    return shape, shape, shape


# ----------------------------------------------------------------------------------------------- decode tail


def decode_tail(nodes: Sequence[Tuple[str, bool, Sequence[str], Sequence[str]]], outputs: Iterable[str]) -> List[str]:
    """Names of the (name, is_conv, inputs, outputs) nodes after the head's last convolutions, in order.

    Walks back from the outputs and stops at a convolution fed by at most one other convolution (a learned head
    conv); a convolution fed by several (the DFL's fixed 1x1 conv, after the scales are joined) is decode.
    """
    producer = {t: node for node in nodes for t in node[3]}
    tail, stack = set(), list(outputs)
    while stack:
        node = producer.get(stack.pop())
        if node is None or node[0] in tail:
            continue
        if node[1] and len(_conv_sources(node[2][0], producer)) <= 1:
            continue
        tail.add(node[0])
        stack.extend(t for t in node[2] if t)
    return [node[0] for node in nodes if node[0] in tail]


def _conv_sources(tensor: str, producer: dict) -> set:
    pending, found, seen = [tensor], set(), set()
    while pending:
        t = pending.pop()
        node = producer.get(t)
        if node is None or t in seen:
            continue
        seen.add(t)
        if node[1]:
            found.add(node[0])
        else:
            pending.extend(x for x in node[2] if x)
    return found


def network_nodes(trt, network) -> List[Tuple[str, bool, List[str], List[str]]]:
    """The layers of a parsed TensorRT network as (name, is_conv, input names, output names)."""
    nodes = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
        nodes.append((layer.name, layer.type == trt.LayerType.CONVOLUTION, [t.name if t is not None else "" for t in
                      inputs], [layer.get_output(j).name for j in range(layer.num_outputs)]))  # fmt: skip
    return nodes


def pin_tail_fp32(trt, network) -> List[str]:
    """Set the decode tail's floating-point layers to FP32 compute and outputs; return their names."""
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    tail = set(decode_tail(network_nodes(trt, network), outputs))
    floats = (trt.float32, trt.float16)
    kept = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        types = [layer.get_output(j).dtype for j in range(layer.num_outputs)]
        if layer.name in tail and layer.type != trt.LayerType.CONSTANT and all(t in floats for t in types):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            kept.append(layer.name)
    return kept


# ---------------------------------------------------------------------------------------- calibration cache key


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def calibration_key(onnx_file: str, images: Sequence[str]) -> Dict[str, Optional[str]]:
    """SHA-256 of the ONNX and of the images in feeding order (None without images): yolo-prune's key."""
    images_hash = None
    if images:
        h = hashlib.sha256()
        for file in images:
            h.update(file_sha256(file).encode())
        images_hash = h.hexdigest()
    return {"onnx_sha256": file_sha256(onnx_file), "images_sha256": images_hash, "calibrator": CALIBRATOR}


def read_key(cache_file: str) -> Optional[dict]:
    try:
        with open(cache_file + ".json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def reuse_cache(key: dict, stored: Optional[dict], cache_file: str) -> bool:
    """Reuse the cache only for this ONNX (and, when images are given, these images); exit when it cannot stand in
    for missing images."""
    exists = os.path.isfile(cache_file)
    if key["images_sha256"] is not None:
        return exists and stored == key
    if not exists:
        raise SystemExit("--int8 needs --calib-images or a calibration cache made for this ONNX (%s)" % cache_file)
    if stored is None or stored.get("onnx_sha256") != key["onnx_sha256"] or stored.get("calibrator") != CALIBRATOR:
        raise SystemExit("%s was not made for this ONNX (or has no key file %s.json): pass --calib-images to "
                         "recalibrate" % (cache_file, cache_file))  # fmt: skip
    return True



# ------------------------------------------------------------------------------------------- INT8 for timing only


TIMING_RANGE = 4.0  # |activation| range given to every tensor of an engine built only to be timed


def set_timing_ranges(trt, network) -> int:
    """Give every network input and layer output a fixed dynamic range, so TensorRT builds INT8 kernels without
    calibration (as `trtexec --int8` does without a cache): right for timing, not for accuracy. Returns the count."""
    count = 0
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        tensors.extend(layer.get_output(j) for j in range(layer.num_outputs))
    for tensor in tensors:
        if tensor.dtype in (trt.float32, trt.float16) and tensor.set_dynamic_range(-TIMING_RANGE, TIMING_RANGE):
            count += 1
    return count
