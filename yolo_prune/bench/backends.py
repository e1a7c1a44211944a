"""Inference steps to time: PyTorch and ONNX Runtime (TensorRT: `trt_runner.py`).

Each runner is called with no argument, runs one batch of fixed random host input to completion and returns
(compute_ms, end_to_end_ms), measured the same way for every backend: compute spans the model alone on input already
where it runs, end-to-end adds copying the input there and the output back to host memory. On a GPU the spans are
CUDA events; on a CPU (where there is nothing to copy) the host clock. `batch` is the batch really run; `close()`
releases what the runner holds.
"""

from __future__ import annotations

import copy
import os
import platform
import time

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

        self.torch, self.batch = torch, batch
        self.cuda = torch.cuda.is_available()
        if half and not self.cuda:
            raise YoloPruneError("--half with the torch backend needs a CUDA GPU; drop --half on a CPU.")
        device = torch.device("cuda" if self.cuda else "cpu")
        model = copy.deepcopy(net).eval().fuse(verbose=False).to(device)
        self.model = model.half() if half else model
        self.host = torch.from_numpy(random_input((batch, 3, *imgsz)))
        self.input = self.host  # on a CPU the model reads the host array itself
        if self.cuda:
            self.host = self.host.pin_memory()  # page-locked, as the TensorRT runner's buffers
            self.input = torch.empty(self.host.shape, dtype=torch.half if half else torch.float32, device=device)
            self.events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        self.output = None
        self()  # one untimed run sizes the host output buffer
        where = torch.cuda.get_device_name(device) if self.cuda else f"{cpu_name()}, {torch.get_num_threads()} threads"
        self.device = f"torch {torch.__version__} on {where}"

    def _forward(self):
        y = self.model(self.input)
        return y[0] if isinstance(y, (list, tuple)) else y  # eval Detect: (decoded, raw maps)

    def __call__(self) -> tuple[float, float]:
        with self.torch.inference_mode():
            return self._gpu_step() if self.cuda else self._cpu_step()

    def _gpu_step(self) -> tuple[float, float]:
        start, loaded, computed, end = self.events
        start.record()
        self.input.copy_(self.host, non_blocking=True)
        loaded.record()
        y = self._forward()
        computed.record()
        if self.output is None:
            self.output = self.torch.empty(y.shape, dtype=y.dtype).pin_memory()
        self.output.copy_(y, non_blocking=True)
        end.record()
        end.synchronize()
        return loaded.elapsed_time(computed), start.elapsed_time(end)

    def _cpu_step(self) -> tuple[float, float]:
        t0 = time.perf_counter()
        y = self._forward()
        t1 = time.perf_counter()
        self.output = y.numpy()  # already in host memory: no copy
        t2 = time.perf_counter()
        return (t1 - t0) * 1e3, (t2 - t0) * 1e3

    def close(self):
        self.model = self.input = self.output = None


class OnnxRuntimeRunner:
    """An ONNX Runtime session, CUDA provider when the installed build has it, else the CPU provider.

    Timed through I/O binding: compute is `run_with_iobinding` on an input already on the provider's device;
    end-to-end adds placing the host input there and copying the output back.
    """

    def __init__(self, onnx_file, imgsz: tuple[int, int] | None, batch: int):
        """`onnx_file`: a path, or the serialized model (bytes) of a graph with a fixed input shape (imgsz None).

        Worker threads do not spin (ONNX Runtime's default is to busy-wait after a run for the next one): sessions are
        timed in turn, interleaved, and the idle sessions' spinning threads would take the cores from the one being
        timed. Measured on the 2-core CPU: 12 site graphs timed one after another took 3.3x as long with spinning on,
        and four yolov7-tiny models interleaved at 640 were each 40-50 ms slower, which shrank every latency cut.
        """
        import onnxruntime as ort

        wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.ort, self.batch = ort, batch
        source = onnx_file if isinstance(onnx_file, bytes) else str(onnx_file)
        self.session = ort.InferenceSession(source, options, providers=wanted)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        sides = None if imgsz is None else _check_onnx_input(onnx_file, inp.shape, imgsz, batch)
        shape = tuple(inp.shape) if sides is None else (batch, 3, *sides)
        self.host = random_input(shape)
        provider = self.session.get_providers()[0]
        self.where = "cpu" if provider.startswith("CPU") else "cuda"
        self.binding = self.session.io_binding()
        for out in self.session.get_outputs():
            self.binding.bind_output(out.name, self.where)
        self.device = f"onnxruntime {ort.__version__} {provider} on " + (cpu_name() if self.where == "cpu" else "GPU")

    def __call__(self) -> tuple[float, float]:
        t0 = time.perf_counter()
        value = self.ort.OrtValue.ortvalue_from_numpy(self.host, self.where, 0)  # the copy in (none on a CPU)
        self.binding.bind_ortvalue_input(self.input_name, value)
        t1 = time.perf_counter()
        self.session.run_with_iobinding(self.binding)
        t2 = time.perf_counter()
        self.binding.copy_outputs_to_cpu()
        t3 = time.perf_counter()
        return (t2 - t1) * 1e3, (t3 - t0) * 1e3

    def close(self):
        self.binding = self.session = None


def _check_onnx_input(onnx_file, shape, imgsz, batch) -> tuple[int, int]:
    fixed_batch, _, h, w = shape
    if (h, w) != tuple(imgsz):
        raise YoloPruneError(f"'{onnx_file}' takes {h}x{w} images; pass --imgsz {h} or export it at {imgsz[0]}.")
    if isinstance(fixed_batch, int) and fixed_batch != batch:
        raise YoloPruneError(f"'{onnx_file}' has a fixed batch of {fixed_batch}; pass --batch {fixed_batch}.")
    return h, w
