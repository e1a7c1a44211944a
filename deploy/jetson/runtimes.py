"""Model runners for the kit: a TensorRT engine through pycuda, or an ONNX file through ONNX Runtime.

Both take a float32 (B, 3, H, W) batch and return the first output and the inference time in ms. `TrtEngine`
supports TensorRT 8.5 (JetPack 5) and 10: the binding API up to 8.x, the named-tensor API (the only one) in 10.
`OnnxModel` exists to run the same pipeline on a machine without TensorRT (a host check, or a CPU fallback).
"""

import os
import time
from typing import List, Tuple

import numpy as np


class TrtEngine:
    """A serialized engine with page-locked host buffers, device buffers, one CUDA stream and CUDA events.

    The buffers are sized for the largest batch the engine accepts (its optimization profile maximum for a dynamic
    batch). The reported time spans host-to-device copy, execution and device-to-host copy, measured by CUDA events.
    """

    def __init__(self, path: str):
        from yolokit import import_tensorrt_and_pycuda

        trt, cuda = import_tensorrt_and_pycuda()
        self.cuda, self.trt = cuda, trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        with open(path, "rb") as f:
            self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RuntimeError("TensorRT cannot load %s: build the engine on this device with this TensorRT" % path)
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.start, self.end = cuda.Event(), cuda.Event()
        self.tensor_api = not hasattr(self.engine, "num_bindings")  # TensorRT 10 removed the binding API
        self.input_name, self.output_names = self._names()
        self.dynamic = False
        self.input_shape = self._max_input_shape()  # (B_max, 3, H, W)
        self.buffers = {}  # name -> (page-locked host array, device allocation)
        self._allocate(self.input_shape)
        self.version = trt.__version__

    @property
    def imgsz(self) -> Tuple[int, int]:
        return int(self.input_shape[2]), int(self.input_shape[3])

    def _names(self) -> Tuple[str, List[str]]:
        engine, trt = self.engine, self.trt
        if self.tensor_api:
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        else:
            names = [engine.get_binding_name(i) for i in range(engine.num_bindings)]
            inputs = [n for i, n in enumerate(names) if engine.binding_is_input(i)]
        if len(inputs) != 1:
            raise RuntimeError("expected one input tensor, the engine has %d" % len(inputs))
        return inputs[0], [n for n in names if n not in inputs]

    def _max_input_shape(self) -> Tuple[int, ...]:
        engine, name = self.engine, self.input_name
        if self.tensor_api:
            shape = tuple(engine.get_tensor_shape(name))
            self.dynamic = shape[0] == -1
            if self.dynamic:
                shape = tuple(engine.get_tensor_profile_shape(name, 0)[2])
        else:
            index = engine.get_binding_index(name)
            shape = tuple(engine.get_binding_shape(index))
            self.dynamic = shape[0] == -1
            if self.dynamic:
                shape = tuple(engine.get_profile_shape(0, index)[2])
        return shape

    def _set_input_shape(self, shape: Tuple[int, ...]):
        """Only a dynamic batch axis takes a shape at run time; a static engine keeps its own."""
        if not self.dynamic:
            return
        if self.tensor_api:
            self.context.set_input_shape(self.input_name, shape)
        else:
            self.context.set_binding_shape(self.engine.get_binding_index(self.input_name), shape)

    def _shape(self, name: str) -> Tuple[int, ...]:
        if self.tensor_api:
            return tuple(self.context.get_tensor_shape(name))
        return tuple(self.context.get_binding_shape(self.engine.get_binding_index(name)))

    def _dtype(self, name: str):
        if self.tensor_api:
            return self.trt.nptype(self.engine.get_tensor_dtype(name))
        return self.trt.nptype(self.engine.get_binding_dtype(self.engine.get_binding_index(name)))

    def _allocate(self, input_shape: Tuple[int, ...]):
        self._set_input_shape(input_shape)
        for name in [self.input_name] + self.output_names:
            host = self.cuda.pagelocked_empty(int(np.prod(self._shape(name))), self._dtype(name))
            self.buffers[name] = (host, self.cuda.mem_alloc(host.nbytes))
            if self.tensor_api:
                self.context.set_tensor_address(name, int(self.buffers[name][1]))

    def __call__(self, batch: np.ndarray) -> Tuple[np.ndarray, float]:
        """Run one batch (n <= the engine's batch); return the first output (n, ...) and the time in ms."""
        cuda, stream = self.cuda, self.stream
        fits = batch.shape[0] <= self.input_shape[0] if self.dynamic else batch.shape[0] == self.input_shape[0]
        if not fits or tuple(batch.shape[1:]) != tuple(self.input_shape[1:]):
            raise ValueError("batch %s does not fit the engine input %s" % (batch.shape, self.input_shape))
        self._set_input_shape(tuple(batch.shape))
        host_in, device_in = self.buffers[self.input_name]
        host_in[: batch.size] = batch.ravel()
        self.start.record(stream)
        cuda.memcpy_htod_async(device_in, host_in, stream)
        if self.tensor_api:
            self.context.execute_async_v3(stream.handle)
        else:
            bindings = [0] * self.engine.num_bindings
            for name, (_, device) in self.buffers.items():
                bindings[self.engine.get_binding_index(name)] = int(device)
            self.context.execute_async_v2(bindings, stream.handle)
        for name in self.output_names:
            host, device = self.buffers[name]
            cuda.memcpy_dtoh_async(host, device, stream)
        self.end.record(stream)
        self.end.synchronize()
        name = self.output_names[0]
        shape = self._shape(name)
        output = self.buffers[name][0][: int(np.prod(shape))].reshape(shape).astype(np.float32)
        return output, self.end.time_since(self.start)


class OnnxModel:
    """An ONNX Runtime session with the same call as `TrtEngine` (time measured on the host)."""

    def __init__(self, path: str):
        import onnxruntime as ort

        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(path, providers=providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        batch = inp.shape[0] if isinstance(inp.shape[0], int) else 1
        self.input_shape = (batch, 3, int(inp.shape[2]), int(inp.shape[3]))
        self.version = "onnxruntime " + ort.__version__

    @property
    def imgsz(self) -> Tuple[int, int]:
        return self.input_shape[2], self.input_shape[3]

    def __call__(self, batch: np.ndarray) -> Tuple[np.ndarray, float]:
        start = time.perf_counter()
        output = self.session.run(None, {self.input_name: batch})[0]
        return output, (time.perf_counter() - start) * 1e3


def load_runtime(path: str):
    """`OnnxModel` for a .onnx file, else `TrtEngine`."""
    if not os.path.isfile(path):
        raise SystemExit("model file not found: %s" % path)
    return OnnxModel(path) if path.endswith(".onnx") else TrtEngine(path)
