"""Inference steps to time: PyTorch, ONNX Runtime, and TensorRT through pycuda.

Each runner is called with no argument, runs one batch of fixed random input to completion and returns its own time
in ms when it measures it on the device (TensorRT: CUDA events), else None (the caller times it on the host).
"""

from __future__ import annotations

import copy
import os
import platform
from pathlib import Path

import numpy as np

from ..errors import YoloPruneError

SEED = 0


def cpu_name() -> str:
    """The CPU model and logical core count, e.g. 'AMD EPYC 7B13, 2 logical cores'."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} logical cores"


def random_input(shape, dtype=np.float32) -> np.ndarray:
    """Reproducible uniform [0, 1) input: the same for every model and backend."""
    return np.random.default_rng(SEED).random(shape, dtype=np.float32).astype(dtype)


class TorchRunner:
    """The fused model in eval mode on CUDA when available (FP16 with `half`), else on the CPU in FP32."""

    def __init__(self, net, imgsz: tuple[int, int], batch: int, half: bool = False):
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        if half and not self.cuda:
            raise YoloPruneError("--half with the torch backend needs a CUDA GPU; drop --half on a CPU.")
        device = torch.device("cuda" if self.cuda else "cpu")
        model = copy.deepcopy(net).eval().fuse(verbose=False).to(device)
        self.input = torch.from_numpy(random_input((batch, 3, *imgsz))).to(device)
        if half:
            model, self.input = model.half(), self.input.half()
        self.model = model
        where = torch.cuda.get_device_name(device) if self.cuda else f"{cpu_name()}, {torch.get_num_threads()} threads"
        self.device = f"torch {torch.__version__} on {where}"

    def __call__(self):
        with self.torch.inference_mode():
            self.model(self.input)
        if self.cuda:
            self.torch.cuda.synchronize()
        return None


class OnnxRuntimeRunner:
    """An ONNX Runtime session, CUDA provider when the installed build has it, else the CPU provider."""

    def __init__(self, onnx_file, imgsz: tuple[int, int], batch: int):
        import onnxruntime as ort

        wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_file), options, providers=wanted)
        inp = self.session.get_inputs()[0]
        fixed_batch, _, h, w = inp.shape
        if (h, w) != tuple(imgsz):
            raise YoloPruneError(f"'{onnx_file}' takes {h}x{w} images; pass --imgsz {h} or export it at {imgsz[0]}.")
        if isinstance(fixed_batch, int) and fixed_batch != batch:
            raise YoloPruneError(f"'{onnx_file}' has a fixed batch of {fixed_batch}; pass --batch {fixed_batch}.")
        self.feed = {inp.name: random_input((batch, 3, h, w))}
        provider = self.session.get_providers()[0]
        self.device = f"onnxruntime {ort.__version__} {provider} on " + (cpu_name() if provider.startswith("CPU") else
                                                                         "GPU")  # fmt: skip

    def __call__(self):
        self.session.run(None, self.feed)
        return None


class TensorRTRunner:
    """A deserialized engine with page-locked host buffers, device buffers, one stream and CUDA events.

    A call copies the input to the device, executes, copies the outputs back and returns the event-measured time of
    the whole (H2D + compute + D2H). Uses the binding API up to TensorRT 8.x (JetPack 5 has 8.5) and the named-tensor
    API, the only one, in 10.
    """

    def __init__(self, engine_file, batch: int):
        from ..export.tensorrt import import_pycuda, import_tensorrt

        trt, cuda = import_tensorrt(), import_pycuda()
        self.cuda = cuda
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_file).read_bytes())
        if self.engine is None:
            raise YoloPruneError(f"TensorRT cannot load '{engine_file}' (built by another TensorRT version or GPU?).")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.start, self.end = cuda.Event(), cuda.Event()
        self.tensor_api = not hasattr(self.engine, "num_bindings")  # TensorRT 10 removed the binding API
        self.inputs, self.outputs = [], []  # (name, host, device)
        for name, is_input, shape, dtype in self._io(trt, batch):
            host = cuda.pagelocked_empty(int(np.prod(shape)), dtype)
            if is_input:
                host[:] = random_input(host.size, dtype)
            device = cuda.mem_alloc(host.nbytes)
            (self.inputs if is_input else self.outputs).append((name, host, device))
        if self.tensor_api:
            for name, _, device in self.inputs + self.outputs:
                self.context.set_tensor_address(name, int(device))
        self.bindings = [int(d) for _, _, d in self.inputs + self.outputs]  # binding API: inputs first, as built
        self.device = f"TensorRT {trt.__version__} on {cuda.Device(0).name()}"

    def _io(self, trt, batch):
        """(name, is_input, concrete shape, numpy dtype) of each I/O tensor, fixing a dynamic batch to `batch`."""
        engine, context = self.engine, self.context
        if self.tensor_api:
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            for name in names:  # inputs first: output shapes follow from them
                if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    shape = tuple(engine.get_tensor_shape(name))
                    if shape[0] == -1:
                        context.set_input_shape(name, (batch, *shape[1:]))
            for name in names:
                yield (name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                       tuple(context.get_tensor_shape(name)), trt.nptype(engine.get_tensor_dtype(name)))  # fmt: skip
        else:
            for i in range(engine.num_bindings):
                if engine.binding_is_input(i) and engine.get_binding_shape(i)[0] == -1:
                    context.set_binding_shape(i, (batch, *tuple(engine.get_binding_shape(i))[1:]))
            for i in range(engine.num_bindings):
                yield (engine.get_binding_name(i), engine.binding_is_input(i), tuple(context.get_binding_shape(i)),
                       trt.nptype(engine.get_binding_dtype(i)))  # fmt: skip

    def __call__(self) -> float:
        cuda, stream = self.cuda, self.stream
        self.start.record(stream)
        for _, host, device in self.inputs:
            cuda.memcpy_htod_async(device, host, stream)
        if self.tensor_api:
            self.context.execute_async_v3(stream.handle)
        else:
            self.context.execute_async_v2(self.bindings, stream.handle)
        for _, host, device in self.outputs:
            cuda.memcpy_dtoh_async(host, device, stream)
        self.end.record(stream)
        self.end.synchronize()
        return self.end.time_since(self.start)
