"""`yolo-prune bench`: latency statistics, interleaved timing, compute and end-to-end columns, FLOPs/speed-up table,
backends and errors."""

import json
import random
import subprocess
import sys

import pytest
from ultralytics.utils.torch_utils import get_flops

from yolo_prune.bench import TABLE_COLUMNS, benchmark, format_table
from yolo_prune.bench.backends import OnnxRuntimeRunner
from yolo_prune.bench.latency import measure, summarize, summarize_columns
from yolo_prune.errors import YoloPruneError
from yolo_prune.nn.build import load_model


def test_summary_statistics():
    times = list(range(1, 101))
    random.Random(0).shuffle(times)
    s = summarize(times, batch=4)
    # linear-interpolation percentiles of 1..100: position (n - 1) * q
    assert (s["median_ms"], s["p90_ms"], s["p99_ms"]) == pytest.approx((50.5, 90.1, 99.01))
    assert (s["min_ms"], s["max_ms"], s["runs"]) == (1, 100, 100)
    assert s["throughput_ips"] == pytest.approx(4 * 1000 / 50.5)


def test_measure_warms_up_then_interleaves_and_keeps_both_columns():
    calls = []

    def step(name, compute, total):
        return lambda: calls.append(name) or (compute, total)

    times = measure([step("a", 1.0, 2.0), step("b", 7.5, 9.0)], warmup=2, runs=3)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert times[0] == {"compute": [1.0] * 3, "end_to_end": [2.0] * 3}
    assert times[1] == {"compute": [7.5] * 3, "end_to_end": [9.0] * 3}
    columns = summarize_columns(times[1], batch=4)
    assert columns["latency"]["median_ms"] == 7.5 and columns["end_to_end"]["median_ms"] == 9.0
    assert columns["latency"]["throughput_ips"] == pytest.approx(4 * 1000 / 7.5)  # per image of the batch run
    assert columns["end_to_end"]["throughput_ips"] == pytest.approx(4 * 1000 / 9.0)


@pytest.mark.slow
def test_onnxruntime_base_vs_slim_table(slim_checkpoint, tmp_path):
    out = tmp_path / "bench.json"
    result = benchmark(["yolov7-tiny.yaml", str(slim_checkpoint)], backend="onnxruntime", imgsz=96, warmup=1, runs=3,
                       json_out=out)  # fmt: skip
    base, slim = result["models"]
    assert base["gflops"] == pytest.approx(get_flops(load_model("yolov7-tiny.yaml"), [96, 96]), abs=1e-3)
    assert slim["flops_cut"] == pytest.approx(1 - slim["gflops"] / base["gflops"]) and slim["flops_cut"] > 0.3
    m0, m1 = base["latency"]["median_ms"], slim["latency"]["median_ms"]
    assert slim["speedup"] == pytest.approx(m0 / m1) and slim["latency_cut"] == pytest.approx(1 - m1 / m0)
    assert slim["latency_cut_per_flops_cut"] == pytest.approx(slim["latency_cut"] / slim["flops_cut"])
    assert base["latency"]["runs"] == 3 and "CPUExecutionProvider" in result["device"]
    assert base["end_to_end"]["runs"] == 3 and base["batch"] == slim["batch"] == 1
    assert json.loads(out.read_text()) == result
    table = format_table(result)
    assert "yolov7-tiny.yaml" in table and "slim.pt" in table and "speedup" in table
    assert all(c in table for c in TABLE_COLUMNS)
    row = next(line for line in table.splitlines() if line.startswith("slim.pt") or "slim.pt" in line[:28])
    assert f"{slim['end_to_end']['median_ms']:.2f}" in row and f"{slim['latency']['median_ms']:.2f}" in row


def test_onnxruntime_runner_spans_compute_inside_end_to_end(tmp_path):
    """Compute is the run alone, end-to-end the same run plus placing the input and fetching the output."""
    from yolo_prune.export import export_model

    onnx_file = export_model("yolov8n.yaml", imgsz=64, batch=2, dynamic=True, out=tmp_path / "n.onnx")
    runner = OnnxRuntimeRunner(onnx_file, (64, 64), batch=2)
    for _ in range(3):
        compute, total = runner()
        assert 0 < compute <= total
    assert runner.batch == 2 and runner.host.shape == (2, 3, 64, 64)
    # interleaved sessions: idle ones must not busy-wait on the cores the timed one needs (docs/latency.md)
    options = runner.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    runner.close()


def test_prebuilt_onnx_and_torch_backend(tmp_path):
    from yolo_prune.export import export_model

    onnx_file = export_model("yolov8n.yaml", imgsz=64, out=tmp_path / "n.onnx")
    result = benchmark([str(onnx_file)], backend="onnxruntime", imgsz=64, warmup=0, runs=2)
    assert result["models"][0]["gflops"] > 0  # from the sidecar
    with pytest.raises(YoloPruneError, match="takes 64x64 images"):
        benchmark([str(onnx_file)], backend="onnxruntime", imgsz=96, runs=1)
    torch_result = benchmark("yolov8n.yaml", backend="torch", imgsz=64, batch=2, warmup=1, runs=2)
    row = torch_result["models"][0]
    assert row["latency"]["runs"] == row["end_to_end"]["runs"] == 2 and "torch" in torch_result["device"]
    assert row["batch"] == 2 and row["latency"]["median_ms"] <= row["end_to_end"]["median_ms"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(backend="onnxruntime", half=True), "--half applies"),
        (dict(backend="openvino"), "Unknown backend"),
        (dict(backend="onnxruntime", runs=0), "runs >= 1"),
        (dict(models=["m.onnx"], backend="torch"), "only be timed with --backend onnxruntime"),
        (dict(models=[]), "at least one model"),
    ],
)
def test_bad_requests_are_one_error(kwargs, message):
    with pytest.raises(YoloPruneError, match=message):
        benchmark(kwargs.pop("models", ["yolov8n.yaml"]), imgsz=64, **kwargs)


def test_tensorrt_backend_without_tensorrt_is_one_error():
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: this checks the message on machines without it")
    except ImportError:
        pass
    with pytest.raises(YoloPruneError, match="TensorRT cannot be imported"):
        benchmark(["yolov8n.yaml"], backend="tensorrt", imgsz=64, runs=1)


def test_cli_bench_prints_the_table(tmp_path):
    done = subprocess.run([sys.executable, "-m", "yolo_prune", "bench", "--model", "yolov8n.yaml", "--backend", "torch",
                           "--imgsz", "64", "--warmup", "0", "--runs", "2", "--json", str(tmp_path / "b.json")],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "yolov8n.yaml" in done.stdout and "median" in done.stdout and "e2e median" in done.stdout
    assert json.loads((tmp_path / "b.json").read_text())["backend"] == "torch"
