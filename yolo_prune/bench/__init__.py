"""Latency benchmarks of one or more models (`yolo-prune bench`), with FLOPs cut and speed-up against the first.

All models are loaded first and warmed up, then timed in interleaved rounds (one run of each model per round) on the
same fixed random input, so a change in machine load hits every model alike. Each row has two timings per batch, taken
alike on every backend (`backends.py`): `latency`, the model's compute alone, and `end_to_end`, which adds copying the
input to the device and the output back. GFLOPs are per image at the benchmark size; `batch` is the batch the model
really ran. The first model is the base of the comparison columns, computed on the compute latency:
FLOPs cut = 1 - GFLOPs / base GFLOPs, latency cut = 1 - median / base median, speed-up = base median / median.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

from ..errors import YoloPruneError

BACKENDS = ("torch", "onnxruntime", "tensorrt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def benchmark(models, backend="onnxruntime", imgsz=640, batch=1, warmup=10, runs=50, half=False, json_out=None) -> dict:
    """Time each model and compare it with the first.

    Args:
        models: one model or a list: names/YAMLs/checkpoints/DetectionModels; for onnxruntime also `.onnx` files,
            for tensorrt also engine files (their `.json` sidecar supplies GFLOPs and parameters).
        backend: "torch" (CUDA if available, else CPU), "onnxruntime" (CPU or CUDA provider) or "tensorrt" (pycuda).
        imgsz: square input size.
        batch: images per run (a fixed-batch ONNX or engine must have this batch, a dynamic engine must allow it).
        warmup: untimed runs first.
        runs: timed runs.
        half: FP16 (torch on CUDA; TensorRT engines built here).
        json_out: also write the result to this JSON file.

    Returns:
        dict with the settings, the device, and one row per model (`batch` run, `latency` (compute) and `end_to_end`
        statistics in ms, `gflops`, `params`, and against the first model `flops_cut`, `latency_cut`, `speedup`,
        `latency_cut_per_flops_cut`).
    """
    from ..export.onnx import imgsz_pair
    from .latency import measure, summarize_columns

    models = list(models) if isinstance(models, (list, tuple)) else [models]
    _check(models, backend, batch, warmup, runs, half)
    hw = imgsz_pair(imgsz)
    with ExitStack() as stack:  # runners closed (newest first) before their temp folder goes
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="yolo_prune_bench_")))
        prepared = []
        for i, m in enumerate(models):
            prepared.append(_runner(m, backend, hw, batch, half, tmp / f"model{i}"))
            stack.callback(prepared[-1][0].close)
        times = measure([runner for runner, _ in prepared], warmup, runs)
    rows = [{"model": _label(m), **info, "batch": runner.batch, **summarize_columns(t, runner.batch)}
            for m, (runner, info), t in zip(models, prepared, times)]  # fmt: skip
    _compare(rows)
    result = {
        "backend": backend, "imgsz": list(hw), "batch": batch, "warmup": warmup, "runs": runs, "half": half,
        "device": prepared[0][0].device, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "models": rows,
    }  # fmt: skip
    if json_out:
        from ..export.files import write_json

        write_json(json_out, result)
    return result


TABLE_COLUMNS = ("model", "batch", "GFLOPs", "params(M)", "median", "p90", "p99", "img/s", "e2e median", "e2e p90",
                 "e2e img/s", "FLOPs cut", "lat. cut", "speedup", "lat/FLOPs cut")  # fmt: skip


def format_table(result: dict) -> str:
    """A text table: model, batch run, GFLOPs, params, compute latency (median/p90/p99, img/s), end-to-end latency
    (median/p90, img/s), and the comparison columns (on the compute latency)."""
    head = (f"{result['backend']}: {result['device']}\nimgsz {result['imgsz'][0]}x{result['imgsz'][1]}, "
            f"{result['warmup']} warm-up + {result['runs']} timed runs (interleaved); ms per batch; median/p90/p99: "
            "compute only, e2e: with the input and output copies")  # fmt: skip
    lines = [head, "  ".join(f"{c:>10}" if i else f"{c:<28}" for i, c in enumerate(TABLE_COLUMNS))]
    for r in result["models"]:
        lines.append(f"{_short(r['model']):<28}  " + "  ".join(f"{c:>10}" for c in _cells(r)))
    return "\n".join(lines)


def _cells(r: dict) -> list[str]:
    lat, e2e = r["latency"], r["end_to_end"]
    return [
        str(r["batch"]), _num(r["gflops"], 2), _num(r["params"] and r["params"] / 1e6, 3), _num(lat["median_ms"], 2),
        _num(lat["p90_ms"], 2), _num(lat["p99_ms"], 2), _num(lat["throughput_ips"], 1), _num(e2e["median_ms"], 2),
        _num(e2e["p90_ms"], 2), _num(e2e["throughput_ips"], 1), _pct(r["flops_cut"]), _pct(r["latency_cut"]),
        _num(r["speedup"], 2, "x"), _num(r["latency_cut_per_flops_cut"], 2),
    ]  # fmt: skip


def _num(v, digits, suffix="") -> str:
    return "-" if v is None else f"{v:.{digits}f}{suffix}"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def _check(models, backend, batch, warmup, runs, half):
    if not models:
        raise YoloPruneError("Give at least one model to benchmark.")
    if backend not in BACKENDS:
        raise YoloPruneError(f"Unknown backend '{backend}'; choose one of {BACKENDS}.")
    if batch < 1 or runs < 1 or warmup < 0:
        raise YoloPruneError(f"Need batch >= 1, runs >= 1 and warmup >= 0 (got {batch}, {runs}, {warmup}).")
    if half and backend == "onnxruntime":
        raise YoloPruneError("--half applies to the torch (CUDA) and tensorrt backends; onnxruntime runs FP32 ONNX.")


def _label(model) -> str:
    return str(model) if isinstance(model, (str, Path)) else type(model).__name__


def _runner(model, backend, imgsz, batch, half, workdir: Path):
    """The timed step for `model` on `backend`, and {gflops, params} of the model it runs."""
    from . import backends

    name = str(model) if isinstance(model, (str, Path)) else ""
    if backend == "onnxruntime" and name.endswith(".onnx"):
        return backends.OnnxRuntimeRunner(name, imgsz, batch), _sidecar_info(name, imgsz)
    if backend == "tensorrt" and name.endswith(ENGINE_SUFFIXES):
        from .trt_runner import TensorRTRunner

        return TensorRTRunner(name, batch), _sidecar_info(name, imgsz)
    if name.endswith((".onnx", *ENGINE_SUFFIXES)):
        fitting = "onnxruntime" if name.endswith(".onnx") else "tensorrt"
        raise YoloPruneError(f"'{name}' can only be timed with --backend {fitting}.")

    from ..nn.build import load_model

    net = load_model(model)
    info = _model_info(net, imgsz)
    if backend == "torch":
        return backends.TorchRunner(net, imgsz, batch, half), info
    workdir.mkdir(parents=True)
    if backend == "onnxruntime":
        from ..export.onnx import export_onnx

        return backends.OnnxRuntimeRunner(export_onnx(net, workdir / "model.onnx", imgsz, batch), imgsz, batch), info
    from ..export import export_model
    from .trt_runner import TensorRTRunner

    engine = export_model(net, format="engine", half=half, imgsz=imgsz, batch=batch, out=workdir / "model.engine")
    return TensorRTRunner(engine, batch), info


def _model_info(net, imgsz) -> dict:
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    return {"gflops": round(get_flops(net, list(imgsz)), 4), "params": int(get_num_params(net))}


def _sidecar_info(file, imgsz) -> dict:
    """GFLOPs and params from an exported file's sidecar (None when absent or made at another size)."""
    from ..export import read_sidecar

    side = read_sidecar(file) or {}
    same_size = side.get("imgsz") == list(imgsz)
    return {"gflops": side.get("gflops") if same_size else None, "params": side.get("params")}


def _compare(rows: list[dict]):
    """Add FLOPs cut, latency cut, speed-up and their ratio against the first row."""
    base = rows[0]
    for r in rows:
        g0, g = base["gflops"], r["gflops"]
        m0, m = base["latency"]["median_ms"], r["latency"]["median_ms"]
        r["flops_cut"] = 1 - g / g0 if g0 and g is not None else None
        r["latency_cut"] = 1 - m / m0
        r["speedup"] = m0 / m
        r["latency_cut_per_flops_cut"] = r["latency_cut"] / r["flops_cut"] if r["flops_cut"] else None
