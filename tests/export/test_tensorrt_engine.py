"""TensorRT engines built by `export_model` and by the kit, run by the kit's runner and by `bench`, on both code paths:
the binding API (TensorRT 8.x, JetPack 5's 8.5) and named tensors (TensorRT 10 and 11). Needs TensorRT, pycuda and a
CUDA GPU: each test skips with the reason elsewhere (nothing here is faked)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from yolo_prune.bench import benchmark
from yolo_prune.errors import YoloPruneError
from yolo_prune.export import export_model, read_sidecar

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu, pytest.mark.slow]
KIT = Path(__file__).resolve().parents[2] / "deploy" / "jetson"
IMGSZ = 160
EXIT_ERRORS = ("PyCUDA ERROR", "PyCUDA WARNING", "context stack was not empty", "[TRT] [E]")  # teardown errors


@pytest.fixture(scope="module")
def trt():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (CUDA machines only)")
    cuda = pytest.importorskip("pycuda.driver", reason="pycuda is not installed (CUDA machines only)")
    cuda.init()
    if cuda.Device.count() == 0:
        pytest.skip("no CUDA device")
    return trt


@pytest.fixture(scope="module")
def major(trt):
    return int(trt.__version__.split(".")[0])


@pytest.fixture(scope="module")
def runtimes():
    sys.path.insert(0, str(KIT))
    import runtimes

    return runtimes


def build(checkpoint, out, major, **kwargs):
    """An engine at FP16 (FP32 on TensorRT 11, which has no FP16 flag) with its ONNX beside it."""
    return export_model(str(checkpoint), format="engine", half=major < 11, imgsz=IMGSZ, out=out, **kwargs)


def reference(onnx_file, x):
    return ort.InferenceSession(str(onnx_file)).run(None, {"images": x})[0]


def assert_close(got, ref):
    assert got.shape == ref.shape
    assert np.abs(got[:, :4] - ref[:, :4]).max() < 2.0  # px, FP16
    assert np.abs(got[:, 4:] - ref[:, 4:]).max() < 2e-2


@pytest.mark.parametrize("dynamic", [False, True])
def test_engine_matches_onnxruntime_in_the_kit_runner(trt, major, runtimes, slim_checkpoint, tmp_path, dynamic):
    engine = build(slim_checkpoint, tmp_path / "slim.engine", major, batch=2, dynamic=dynamic)
    side = read_sidecar(engine)
    assert side["tensorrt"] == trt.__version__ and side["onnx"] == "slim.onnx"
    assert side["profile"] == (None if not dynamic else {"min": [1, 3, IMGSZ, IMGSZ], "opt": [2, 3, IMGSZ, IMGSZ],
                                                         "max": [2, 3, IMGSZ, IMGSZ]})  # fmt: skip
    x = np.random.default_rng(0).random((2, 3, IMGSZ, IMGSZ), dtype=np.float32)
    with runtimes.TrtEngine(str(engine)) as model:
        got, (compute, total) = model(x)
        assert model.batch == 2 and 0 < compute <= total
        if dynamic:  # one image into the batch-2 buffers: only its rows are copied and returned
            one, _ = model(x[:1])
            assert_close(one, reference(tmp_path / "slim.onnx", x[:1]))
    assert_close(got, reference(tmp_path / "slim.onnx", x))


def run_both_runners(runtimes, engine, onnx_file):
    """The package's bench runner and the kit's runner on one engine; returns their I/O objects."""
    from yolo_prune.bench.trt_runner import TensorRTRunner

    runner = TensorRTRunner(engine, batch=2)
    compute, total = runner()
    assert runner.batch == 2 and 0 < compute <= total
    package_io = type(runner.s.io).__name__
    runner.close()
    x = np.random.default_rng(1).random((2, 3, IMGSZ, IMGSZ), dtype=np.float32)
    with runtimes.TrtEngine(str(engine)) as model:
        got, _ = model(x)
        kit_io = type(model.s.io).__name__
    assert_close(got, reference(onnx_file, x))
    return package_io, kit_io


def test_binding_api_path_on_tensorrt_8(trt, major, runtimes, slim_checkpoint, tmp_path):
    if major >= 10:
        pytest.skip(f"TensorRT {trt.__version__} has no binding API; this is the TensorRT 8.x (JetPack 5) path")
    engine = build(slim_checkpoint, tmp_path / "slim.engine", major, batch=2, dynamic=True)
    assert run_both_runners(runtimes, engine, tmp_path / "slim.onnx") == ("BindingIO", "BindingIO")


def test_named_tensor_path_on_tensorrt_10_and_11(trt, major, runtimes, slim_checkpoint, tmp_path):
    if major < 10:
        pytest.skip(f"TensorRT {trt.__version__} uses the binding API path; named tensors are the 10/11 path")
    engine = build(slim_checkpoint, tmp_path / "slim.engine", major, batch=2, dynamic=True)
    assert run_both_runners(runtimes, engine, tmp_path / "slim.onnx") == ("TensorIO", "TensorIO")


def test_int8_calibrates_at_the_engine_batch_keeps_decode_fp32_and_keys_its_cache(trt, major, slim_checkpoint, coco8,
                                                                                   coco128, tmp_path):  # fmt: skip
    if major >= 11:
        pytest.skip(f"TensorRT {trt.__version__} has no INT8 calibration (explicit quantization only)")
    args = dict(format="engine", int8=True, imgsz=IMGSZ, batch=2, dynamic=True, out=tmp_path / "slim_int8.engine")
    engine = export_model(str(slim_checkpoint), data=str(coco8 / "images" / "val"), **args)
    side = read_sidecar(engine)
    assert side["precision"] == "int8" and side["calibration_batch"] == 2 and not side["calibration_reused"]
    assert any(name.endswith("Concat_3") for name in side["fp32_layers"])  # the boxes-and-scores concat
    cache = tmp_path / "slim_int8.calib.cache"
    assert cache.stat().st_size > 0 and json.loads((tmp_path / "slim_int8.calib.cache.json").read_text())
    again = export_model(str(slim_checkpoint), data=str(coco8 / "images" / "val"), **args)
    assert read_sidecar(again)["calibration_reused"]  # same ONNX, same images
    other = export_model(str(slim_checkpoint), data=str(coco128 / "images" / "train2017"), **args)
    assert not read_sidecar(other)["calibration_reused"]  # new --data: recalibrated


def test_bench_times_the_batch_the_engine_runs(trt, major, slim_checkpoint, tmp_path):
    engine = build(slim_checkpoint, tmp_path / "s.engine", major, batch=2)
    result = benchmark([str(engine)], backend="tensorrt", imgsz=IMGSZ, batch=2, warmup=5, runs=20)
    row = result["models"][0]
    assert row["batch"] == 2 and row["latency"]["runs"] == row["end_to_end"]["runs"] == 20 and row["gflops"] > 0
    assert 0 < row["latency"]["median_ms"] <= row["end_to_end"]["median_ms"]
    assert row["latency"]["throughput_ips"] == pytest.approx(2e3 / row["latency"]["mean_ms"])
    with pytest.raises(YoloPruneError, match="fixed batch of 2"):
        benchmark([str(engine)], backend="tensorrt", imgsz=IMGSZ, batch=1, runs=1)


def test_kit_builds_times_and_exits_cleanly(trt, major, slim_checkpoint, coco8, tmp_path):
    """The kit in fresh processes: INT8 (or FP32 on 11) build and a benchmark, with no CUDA errors at exit."""
    onnx_file = export_model(str(slim_checkpoint), imgsz=IMGSZ, batch=2, dynamic=True, out=tmp_path / "slim.onnx")
    flags = ["--int8", "--calib-images", str(coco8 / "images" / "val")] if major < 11 else []
    for script, args in [("build_engine.py", ["--onnx", str(onnx_file), "--engine", str(tmp_path / "k.engine"),
                                              "--batch", "2", *flags]),
                         ("benchmark.py", ["--model", str(tmp_path / "k.engine"), "--runs", "20",
                                           "--out", str(tmp_path / "k.json")])]:  # fmt: skip
        done = subprocess.run([sys.executable, str(KIT / script), *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert not any(e in done.stdout + done.stderr for e in EXIT_ERRORS), done.stderr[-2000:]
    result = json.loads((tmp_path / "k.json").read_text())
    assert result["batch"] == 2 and result["latency_ms"]["median_ms"] <= result["end_to_end_ms"]["median_ms"]
    if flags:
        assert (tmp_path / "k.calib.cache.json").is_file() and read_sidecar(tmp_path / "k.engine")["fp32_layers"]
