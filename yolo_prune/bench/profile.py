"""`yolo-prune profile`: measure a model's latency table (lut.json) on ONNX Runtime or TensorRT.

The plan (latency/plan.py) lists every conv site and the widths to time; each point is timed as the site's own graph
(latency/sitegraph.py, `measure_sites`: interleaved rounds, one reference graph per round). Last, the dense model and
a probe (every group at half width, physically slimmed) are timed together, interleaved: the two equations
latency/lut.py fits the model's fixed part and the sites' in-model scale from. `measure_to_cache` is the measurement
`--latency` runs when it has no table yet.
"""

from __future__ import annotations

import statistics
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import YoloPruneError
from ..graph.analyze import ChannelGraph
from ..latency.plan import plan_table
from ..latency.sitegraph import measure_sites, site_graph, site_points

PROBE_KEEP = 0.5  # the probe model keeps this share of every group (timed with the dense model: the model-level fit)


def measure_table(table: dict, timer, warmup: int = 2, runs: int = 10, progress=print) -> dict:
    """Fill `table` (from plan_table) with median compute times in ms, site by site; returns it."""
    batch = table["batch"]

    def time_points(items):
        openers = [lambda i=i: timer.site(site_graph(i[0], i[1], i[2], batch).SerializeToString()) for i in items]
        return _time(openers, warmup, runs)

    return measure_sites(table, time_points, progress)


def plan_model(model, imgsz=640, batch=1, step=8) -> tuple[dict, object]:
    """The table without timings (sites, widths, the probe's widths) and the probe model (slimmed to half width)."""
    from ..export.onnx import check_imgsz
    from ..graph.analyze import analyze
    from ..slim.slim import slim

    hw = check_imgsz(model, imgsz)
    graph = analyze(model, hw)
    table = plan_table(model, graph, hw, batch, step)
    masks = half_width(graph, step)
    alive = graph.alive_components(masks)
    sites = [[int(alive[s.in_comp].sum()), int(alive[s.out_comp].sum())] for s in graph.sites]
    table["probe"] = {"keep": PROBE_KEEP, "sites": sites}
    return table, slim(model, graph, masks)


def profile_model(model, backend="onnxruntime", imgsz=640, batch=1, step=8, half=False, warmup=2, runs=10,
                  dense_runs=30, progress=print) -> dict:  # fmt: skip
    """Plan and measure the latency table of `model` (a DetectionModel) on `backend`; returns the table dict."""
    table, probe = plan_model(model, imgsz, batch, step)
    timer = make_timer(backend, batch, half)
    if progress:
        points = sum(len(site_points(s)) for s in table["sites"])
        progress(f"yolo-prune profile: {len(table['sites'])} conv sites, {points} graphs on {timer.device}")
    measure_table(table, timer, warmup, runs, progress)
    dense_ms, probe_ms = timer.models([model, probe], tuple(table["imgsz"]), dense_runs)
    table["dense_ms"] = dense_ms
    table["probe"].update(ms=probe_ms, dense_ms=dense_ms)
    table.update(backend=backend, precision=timer.precision, device=timer.device, warmup=warmup, runs=runs,
                 date=datetime.now(timezone.utc).isoformat(timespec="seconds"))  # fmt: skip
    return table


def write_plan(model, folder, imgsz=640, batch=1, step=8) -> Path:
    """For the Jetson kit (deploy/jetson/profile_latency.py): plan.json and the dense and probe models as ONNX."""
    from ..export.files import write_json
    from ..export.onnx import export_onnx

    folder = Path(folder)
    table, probe = plan_model(model, imgsz, batch, step)
    hw = tuple(table["imgsz"])
    export_onnx(model, folder / "dense.onnx", hw, batch)
    export_onnx(probe, folder / "probe.onnx", hw, batch)
    return write_json(folder / "plan.json", table)


def half_width(graph: ChannelGraph, step: int) -> dict[str, np.ndarray]:
    """Masks of the probe: every group at PROBE_KEEP of its width, on the grid (at least one step)."""
    masks = {}
    for g in graph.groups:
        keep = min(g.width, max(step, step * round(PROBE_KEEP * g.width / step)))
        masks[g.name] = np.arange(g.width) < keep
    return masks


def make_timer(backend: str, batch: int, half: bool):
    if backend == "onnxruntime":
        if half:
            raise YoloPruneError("--half applies to the tensorrt backend; onnxruntime runs FP32.")
        return OrtTimer(batch)
    if backend == "tensorrt":
        return TrtTimer(batch, half)
    raise YoloPruneError(f"Unknown backend '{backend}' for a latency table; choose onnxruntime or tensorrt.")


class OrtTimer:
    """Site graphs and the dense model in ONNX Runtime, with the session settings of `yolo-prune bench`."""

    precision = "fp32"

    def __init__(self, batch: int):
        from ..bench.backends import OnnxRuntimeRunner

        self.batch, self.runner = batch, OnnxRuntimeRunner
        from onnx import TensorProto, helper

        probe = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                                                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
                                  opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
        probe.ir_version = 8
        self.device = OnnxRuntimeRunner(probe.SerializeToString(), None, 1).device

    def site(self, onnx_bytes: bytes):
        return self.runner(onnx_bytes, None, self.batch)

    def models(self, models, hw, runs: int) -> list[float]:
        """Median compute ms of whole models, timed interleaved."""
        from ..export.onnx import export_onnx

        with tempfile.TemporaryDirectory(prefix="yolo_prune_profile_") as tmp:
            files = [export_onnx(m, Path(tmp) / f"model{i}.onnx", hw, self.batch) for i, m in enumerate(models)]
            return _time([lambda f=f: self.runner(f, hw, self.batch) for f in files], 10, runs)


class TrtTimer:
    """Site graphs and the dense model as TensorRT engines (FP32, or FP16 with `half`), timed with CUDA events."""

    def __init__(self, batch: int, half: bool):
        from ..export.cuda import import_tensorrt

        trt = import_tensorrt()  # one clear error here when TensorRT is absent
        self.batch, self.half = batch, half
        self.precision = "fp16" if half else "fp32"
        self.device = f"TensorRT {trt.__version__}"
        self._tmp = tempfile.TemporaryDirectory(prefix="yolo_prune_profile_trt_")
        self._n = 0

    def site(self, onnx_bytes: bytes):
        from ..bench.trt_runner import TensorRTRunner
        from ..export.tensorrt import build_engine

        self._n += 1
        onnx_file = Path(self._tmp.name) / f"site{self._n}.onnx"
        onnx_file.write_bytes(onnx_bytes)
        engine = onnx_file.with_suffix(".engine")
        build_engine(onnx_file, engine, imgsz=None, batch=self.batch, half=self.half)
        runner = TensorRTRunner(engine, self.batch)
        self.device = runner.device
        return runner

    def models(self, models, hw, runs: int) -> list[float]:
        from ..bench.trt_runner import TensorRTRunner
        from ..export import export_model

        folder = Path(self._tmp.name)
        engines = [export_model(m, format="engine", half=self.half, imgsz=hw, batch=self.batch,
                                out=folder / f"model{i}.engine") for i, m in enumerate(models)]  # fmt: skip
        return _time([lambda e=e: TensorRTRunner(e, self.batch) for e in engines], 10, runs)


def _time(openers, warmup: int, runs: int) -> list[float]:
    """Median compute ms of each runner `openers` open, timed interleaved; every runner closed afterwards."""
    from ..bench.latency import measure

    runners = []
    try:
        for open_runner in openers:
            runners.append(open_runner())
        return [statistics.median(t["compute"]) for t in measure(runners, warmup, runs)]
    finally:
        for r in runners:
            r.close()


def measure_to_cache(model, path, imgsz, backend: str, batch: int = 1, step: int = 8, progress=print) -> dict:
    """Measure the table of `model` and write it to `path` (the cache file `--latency` looks for); returns it."""
    from ..export.files import write_json

    data = profile_model(model, backend=backend, imgsz=imgsz, batch=batch, step=step, progress=progress)
    write_json(path, data)
    return data
