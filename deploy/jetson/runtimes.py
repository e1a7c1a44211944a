"""Model runners for the kit: a TensorRT engine through pycuda, or an ONNX file through ONNX Runtime.

Both take a float32 (n, 3, H, W) batch and return the first output and (compute_ms, end_to_end_ms): compute spans
the model alone on input already on the device (CUDA events around the enqueue), end-to-end adds the input copy in
and the output copy back. `TrtEngine` supports TensorRT 8.5 (JetPack 5, binding API) and 10/11 (named tensors).
`OnnxModel` runs the same pipeline on a machine without TensorRT (a host check, or a CPU fallback). Use them as
context managers: TensorRT objects and CUDA buffers are released before the CUDA context is popped.
"""

import os
import time
from contextlib import ExitStack
from typing import List, Optional, Tuple

import numpy as np

import trtkit


class TrtEngine:
    """A serialized engine with page-locked host buffers, device buffers, one CUDA stream and four CUDA events.

    Buffers are sized for `batch` (default: the engine's fixed batch, or its profile's largest); a call with fewer
    images copies only theirs in and out.
    """

    def __init__(self, path: str, batch: Optional[int] = None):
        self.trt, self.cuda = trtkit.import_tensorrt_and_pycuda()
        self.version = self.trt.__version__
        self._stack = ExitStack()
        self.s = self._stack.enter_context(trtkit.cuda_scope(self.cuda))
        try:
            self._load(path, batch)
        except BaseException:
            self.close()
            raise

    def _load(self, path: str, batch: Optional[int]):
        s, trt, cuda = self.s, self.trt, self.cuda
        s.logger = trt.Logger(trt.Logger.WARNING)
        s.runtime = trt.Runtime(s.logger)
        with open(path, "rb") as f:
            s.engine = s.runtime.deserialize_cuda_engine(f.read())
        if s.engine is None:
            raise SystemExit("TensorRT cannot load %s: build the engine on this device with this TensorRT" % path)
        s.context = s.engine.create_execution_context()
        s.io = (BindingIO if hasattr(s.engine, "num_bindings") else TensorIO)(trt, s.engine, s.context)
        shape = s.io.input_shape()
        self.batch = trtkit.run_batch(batch, shape, s.io.profile())
        self.input_shape = (self.batch,) + tuple(shape[1:])
        self._rows = None
        self._set_rows(self.batch)
        s.stream = cuda.Stream()
        s.events = [cuda.Event() for _ in range(4)]
        s.buffers = {}  # name -> (page-locked host array, device allocation), sized for self.batch
        for name in s.io.names:
            host = cuda.pagelocked_empty(int(np.prod(s.io.shape(name))), s.io.dtype(name))
            s.buffers[name] = (host, cuda.mem_alloc(host.nbytes))
            s.io.bind(name, int(s.buffers[name][1]))

    @property
    def imgsz(self) -> Tuple[int, int]:
        return int(self.input_shape[2]), int(self.input_shape[3])

    def _set_rows(self, n: int):
        """Give a dynamic engine the input shape for `n` images (a fixed one keeps its own); check TensorRT took it."""
        if self.s.io.dynamic and n != self._rows:
            if not self.s.io.set_input_shape((n,) + self.input_shape[1:]):
                raise SystemExit("TensorRT rejected an input of %d images for this engine" % n)
        self._rows = n

    def _check(self, batch: np.ndarray):
        n = batch.shape[0]
        fits = 1 <= n <= self.batch if self.s.io.dynamic else n == self.batch
        if not fits or tuple(batch.shape[1:]) != tuple(self.input_shape[1:]):
            raise SystemExit("a batch of shape %s does not fit the engine input %s%s" % (
                batch.shape, self.input_shape, "" if self.s.io.dynamic else " (a fixed batch: rebuild it with batch 1 "
                "or a dynamic batch to feed single images)"))  # fmt: skip

    def __call__(self, batch: np.ndarray) -> Tuple[np.ndarray, Tuple[float, float]]:
        """Run `batch` (n images); return the first output (n, ...) and (compute_ms, end_to_end_ms)."""
        self._check(batch)
        n = batch.shape[0]
        self._set_rows(n)
        s, cuda = self.s, self.cuda
        start, loaded, computed, end = s.events
        host_in, device_in = s.buffers[s.io.input]
        count = trtkit.used_elements(self.input_shape, n)
        host_in[:count] = batch.ravel()
        start.record(s.stream)
        cuda.memcpy_htod_async(device_in, host_in[:count], s.stream)
        loaded.record(s.stream)
        ok = s.io.execute(s.stream.handle)
        computed.record(s.stream)
        for name in s.io.outputs:
            host, device = s.buffers[name]
            cuda.memcpy_dtoh_async(host[: trtkit.used_elements(s.io.shape(name), n)], device, s.stream)
        end.record(s.stream)
        end.synchronize()
        if not ok:
            raise RuntimeError("TensorRT failed to enqueue the engine (see its log above); no output, no time")
        shape = s.io.shape(s.io.outputs[0])
        output = s.buffers[s.io.outputs[0]][0][: trtkit.used_elements(shape, n)].reshape(shape).astype(np.float32)
        return output, (computed.time_since(loaded), end.time_since(start))

    def close(self):
        """Release buffers, stream, execution context, engine and runtime (newest first), then pop the context."""
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class BindingIO:
    """Engine I/O through the binding API (TensorRT 8.x)."""

    def __init__(self, trt, engine, context):
        self.trt, self.engine, self.context = trt, engine, context
        self.names = [engine.get_binding_name(i) for i in range(engine.num_bindings)]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.input, self.outputs = _split(self.names, lambda n: engine.binding_is_input(self.index[n]))
        self.dynamic = self.input_shape()[0] == -1
        self.bindings = [0] * len(self.names)

    def input_shape(self) -> Tuple[int, ...]:
        return tuple(self.engine.get_binding_shape(self.index[self.input]))

    def profile(self):
        return self.engine.get_profile_shape(0, self.index[self.input]) if self.dynamic else None

    def set_input_shape(self, shape) -> bool:
        return self.context.set_binding_shape(self.index[self.input], tuple(shape))

    def shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self.context.get_binding_shape(self.index[name]))

    def dtype(self, name: str):
        return self.trt.nptype(self.engine.get_binding_dtype(self.index[name]))

    def bind(self, name: str, pointer: int):
        self.bindings[self.index[name]] = pointer

    def execute(self, stream_handle) -> bool:
        return self.context.execute_async_v2(self.bindings, stream_handle)


class TensorIO:
    """Engine I/O through named tensors (TensorRT 10 and 11)."""

    def __init__(self, trt, engine, context):
        self.trt, self.engine, self.context = trt, engine, context
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input, self.outputs = _split(self.names, lambda n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.dynamic = self.input_shape()[0] == -1

    def input_shape(self) -> Tuple[int, ...]:
        return tuple(self.engine.get_tensor_shape(self.input))

    def profile(self):
        return self.engine.get_tensor_profile_shape(self.input, 0) if self.dynamic else None

    def set_input_shape(self, shape) -> bool:
        return self.context.set_input_shape(self.input, tuple(shape))

    def shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self.context.get_tensor_shape(name))

    def dtype(self, name: str):
        return self.trt.nptype(self.engine.get_tensor_dtype(name))

    def bind(self, name: str, pointer: int):
        if not self.context.set_tensor_address(name, pointer):
            raise RuntimeError("TensorRT rejected the device address of tensor %s" % name)

    def execute(self, stream_handle) -> bool:
        return self.context.execute_async_v3(stream_handle)


def _split(names: List[str], is_input) -> Tuple[str, List[str]]:
    inputs = [n for n in names if is_input(n)]
    if len(inputs) != 1:
        raise SystemExit("expected one input tensor, the engine has %d" % len(inputs))
    return inputs[0], [n for n in names if n not in inputs]


class OnnxModel:
    """An ONNX Runtime session with the same call as `TrtEngine`, timed on the host through I/O binding: compute is
    the run on an input already on the provider's device, end-to-end adds placing it there and fetching the output."""

    def __init__(self, path: str, batch: Optional[int] = None):
        import onnxruntime as ort

        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        options = ort.SessionOptions()
        # no busy-waiting worker threads: sessions are timed in turn, and idle ones spinning would slow the one timed
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.ort, self.session = ort, ort.InferenceSession(path, options, providers=providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
        if batch is not None and fixed is not None and batch != fixed:
            raise SystemExit("%s has a fixed batch of %d; pass --batch %d or none" % (path, fixed, fixed))
        self.batch = fixed or batch or 1
        self.input_shape = (self.batch, 3, int(inp.shape[2]), int(inp.shape[3]))
        self.where = "cpu" if self.session.get_providers()[0].startswith("CPU") else "cuda"
        self.binding = self.session.io_binding()
        for out in self.session.get_outputs():
            self.binding.bind_output(out.name, self.where)
        self.version = "onnxruntime " + ort.__version__

    @property
    def imgsz(self) -> Tuple[int, int]:
        return self.input_shape[2], self.input_shape[3]

    def __call__(self, batch: np.ndarray) -> Tuple[np.ndarray, Tuple[float, float]]:
        t0 = time.perf_counter()
        value = self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(batch), self.where, 0)
        self.binding.bind_ortvalue_input(self.input_name, value)
        t1 = time.perf_counter()
        self.session.run_with_iobinding(self.binding)
        t2 = time.perf_counter()
        output = self.binding.copy_outputs_to_cpu()[0]
        t3 = time.perf_counter()
        return output, ((t2 - t1) * 1e3, (t3 - t0) * 1e3)

    def close(self):
        self.binding = self.session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_runtime(path: str, batch: Optional[int] = None):
    """`OnnxModel` for a .onnx file, else `TrtEngine`; use it in a `with` block."""
    if not os.path.isfile(path):
        raise SystemExit("model file not found: %s" % path)
    return OnnxModel(path, batch) if path.endswith(".onnx") else TrtEngine(path, batch)
