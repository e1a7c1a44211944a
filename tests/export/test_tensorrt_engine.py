"""TensorRT engines built by `export_model`, run by the Jetson kit's runner and by `bench`. Needs TensorRT, pycuda
and a CUDA GPU: skipped elsewhere (nothing here is faked)."""

import sys
from pathlib import Path

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (CUDA machines only)")
pytest.importorskip("pycuda.driver", reason="pycuda is not installed (CUDA machines only)")

import onnxruntime as ort  # noqa: E402

from yolo_prune.bench import benchmark  # noqa: E402
from yolo_prune.export import export_model, read_sidecar  # noqa: E402

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu, pytest.mark.slow]
KIT = Path(__file__).resolve().parents[2] / "deploy" / "jetson"
IMGSZ = 160


@pytest.fixture(scope="module")
def kit_runtime():
    sys.path.insert(0, str(KIT))
    import runtimes

    return runtimes


@pytest.mark.parametrize("dynamic", [False, True])
def test_fp16_engine_matches_onnxruntime(slim_checkpoint, tmp_path, kit_runtime, dynamic):
    engine = export_model(str(slim_checkpoint), format="engine", half=True, imgsz=IMGSZ, batch=2, dynamic=dynamic,
                          out=tmp_path / "slim.engine")  # fmt: skip
    side = read_sidecar(engine)
    assert side["precision"] == "fp16" and side["tensorrt"] == trt.__version__ and side["onnx"] == "slim.onnx"
    x = np.random.default_rng(0).random((2, 3, IMGSZ, IMGSZ), dtype=np.float32)
    got, ms = kit_runtime.TrtEngine(str(engine))(x)
    (ref,) = ort.InferenceSession(str(tmp_path / "slim.onnx")).run(None, {"images": x})
    assert got.shape == ref.shape and ms > 0
    assert np.abs(got[:, :4] - ref[:, :4]).max() < 2.0  # px, FP16
    assert np.abs(got[:, 4:] - ref[:, 4:]).max() < 2e-2


def test_int8_engine_calibrates_on_images_and_writes_its_cache(slim_checkpoint, coco8, tmp_path):
    engine = export_model(str(slim_checkpoint), format="engine", int8=True, data=str(coco8 / "images" / "val"),
                          imgsz=IMGSZ, batch=2, out=tmp_path / "slim_int8.engine")  # fmt: skip
    assert read_sidecar(engine)["precision"] == "int8"
    assert (tmp_path / "slim_int8.calib.cache").stat().st_size > 0


def test_bench_tensorrt_times_an_engine(slim_checkpoint, tmp_path):
    engine = export_model(str(slim_checkpoint), format="engine", half=True, imgsz=IMGSZ, out=tmp_path / "s.engine")
    result = benchmark([str(engine)], backend="tensorrt", imgsz=IMGSZ, warmup=5, runs=20)
    row = result["models"][0]
    assert row["latency"]["runs"] == 20 and row["latency"]["median_ms"] > 0 and row["gflops"] > 0
