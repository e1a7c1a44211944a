"""The TensorRT step of `yolo-prune bench`: a deserialized engine, page-locked host buffers, device buffers, one
stream and four CUDA events.

Two APIs, chosen by what the engine offers: the binding API up to TensorRT 8.x (JetPack 5 has 8.5) and the
named-tensor API, the only one from TensorRT 10 on. A call copies the input in, enqueues, copies the outputs back and
returns (compute, end-to-end) in ms: the events around the enqueue alone, and around the whole. The engine runs the
batch `trt_plan.run_batch` allows, and `batch` says which; a rejected input shape or a failed enqueue is an error, not
a time. Everything lives in the device's primary context and is released before it is popped (`close`).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np

from ..errors import YoloPruneError
from ..export.cuda import cuda_scope, import_tensorrt
from ..export.trt_plan import run_batch
from .backends import random_input


class TensorRTRunner:
    def __init__(self, engine_file, batch: int):
        trt = import_tensorrt()
        self._stack = ExitStack()
        self.cuda, self.s = self._stack.enter_context(cuda_scope())
        try:
            self._load(trt, Path(engine_file), batch)
        except BaseException:
            self.close()
            raise
        self.device = f"TensorRT {trt.__version__} on {self.cuda.Device(0).name()}"

    def _load(self, trt, engine_file: Path, batch: int):
        s, cuda = self.s, self.cuda
        s.logger = trt.Logger(trt.Logger.WARNING)
        s.runtime = trt.Runtime(s.logger)
        s.engine = s.runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if s.engine is None:
            raise YoloPruneError(f"TensorRT cannot load '{engine_file}' (built by another TensorRT version or GPU?).")
        s.context = s.engine.create_execution_context()
        api = BindingIO if hasattr(s.engine, "num_bindings") else TensorIO  # TensorRT 10 removed the binding API
        s.io = api(trt, s.engine, s.context)
        self.batch = run_batch(batch, s.io.input_shape(), s.io.profile(), engine_file.name)
        if s.io.dynamic and not s.io.set_input_shape((self.batch, *s.io.input_shape()[1:])):
            raise YoloPruneError(f"TensorRT rejected batch {self.batch} for '{engine_file.name}'.")
        s.stream = cuda.Stream()
        s.events = [cuda.Event() for _ in range(4)]
        s.buffers = [self._buffer(name) for name in s.io.names]  # (name, is input, host, device)
        for name, _, _, device in s.buffers:
            s.io.bind(name, int(device))

    def _buffer(self, name: str):
        io, cuda = self.s.io, self.cuda
        host = cuda.pagelocked_empty(int(np.prod(io.shape(name))), io.dtype(name))
        if io.is_input(name):
            host[:] = random_input(host.size, host.dtype)
        return name, io.is_input(name), host, cuda.mem_alloc(host.nbytes)

    def __call__(self) -> tuple[float, float]:
        s, cuda = self.s, self.cuda
        start, loaded, computed, end = s.events
        start.record(s.stream)
        for _, is_input, host, device in s.buffers:
            if is_input:
                cuda.memcpy_htod_async(device, host, s.stream)
        loaded.record(s.stream)
        ok = s.io.execute(s.stream.handle)
        computed.record(s.stream)
        for _, is_input, host, device in s.buffers:
            if not is_input:
                cuda.memcpy_dtoh_async(host, device, s.stream)
        end.record(s.stream)
        end.synchronize()
        if not ok:
            raise YoloPruneError("TensorRT failed to enqueue the engine (its log above says why); no time is reported.")
        return computed.time_since(loaded), end.time_since(start)

    def close(self):
        """Free buffers, stream, context, engine and runtime (newest first), then pop the CUDA context."""
        self._stack.close()


class BindingIO:
    """I/O of an engine through the binding API (TensorRT 8.x): bindings by index, inputs first as built."""

    def __init__(self, trt, engine, context):
        self.trt, self.engine, self.context = trt, engine, context
        self.names = [engine.get_binding_name(i) for i in range(engine.num_bindings)]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.input = next(n for n in self.names if self.is_input(n))
        self.dynamic = self.input_shape()[0] == -1
        self.bindings = [0] * len(self.names)

    def is_input(self, name) -> bool:
        return self.engine.binding_is_input(self.index[name])

    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.engine.get_binding_shape(self.index[self.input]))

    def profile(self):
        return self.engine.get_profile_shape(0, self.index[self.input]) if self.dynamic else None

    def set_input_shape(self, shape) -> bool:
        return self.context.set_binding_shape(self.index[self.input], tuple(shape))

    def shape(self, name) -> tuple[int, ...]:
        return tuple(self.context.get_binding_shape(self.index[name]))

    def dtype(self, name):
        return self.trt.nptype(self.engine.get_binding_dtype(self.index[name]))

    def bind(self, name, pointer: int):
        self.bindings[self.index[name]] = pointer

    def execute(self, stream_handle) -> bool:
        return self.context.execute_async_v2(self.bindings, stream_handle)


class TensorIO:
    """I/O of an engine through named tensors (TensorRT 10 and 11): addresses set on the context by name."""

    def __init__(self, trt, engine, context):
        self.trt, self.engine, self.context = trt, engine, context
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input = next(n for n in self.names if self.is_input(n))
        self.dynamic = self.input_shape()[0] == -1

    def is_input(self, name) -> bool:
        return self.engine.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT

    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.engine.get_tensor_shape(self.input))

    def profile(self):
        return self.engine.get_tensor_profile_shape(self.input, 0) if self.dynamic else None

    def set_input_shape(self, shape) -> bool:
        return self.context.set_input_shape(self.input, tuple(shape))

    def shape(self, name) -> tuple[int, ...]:
        return tuple(self.context.get_tensor_shape(name))

    def dtype(self, name):
        return self.trt.nptype(self.engine.get_tensor_dtype(name))

    def bind(self, name, pointer: int):
        if not self.context.set_tensor_address(name, pointer):
            raise YoloPruneError(f"TensorRT rejected the device address of tensor '{name}'.")

    def execute(self, stream_handle) -> bool:
        return self.context.execute_async_v3(stream_handle)
