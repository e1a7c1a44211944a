"""ONNX export of slim models: runs in ONNX Runtime, matches PyTorch, fixed or dynamic batch, sidecar, errors."""

import hashlib
import json
import subprocess
import sys

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from ultralytics.utils.torch_utils import get_flops

from yolo_prune.errors import YoloPruneError
from yolo_prune.export import export_model, read_sidecar
from yolo_prune.export.calibration import preprocess
from yolo_prune.nn.build import load_model

IMGSZ = 160


@pytest.fixture(scope="module")
def slim_onnx(slim_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "slim.onnx"
    return export_model(str(slim_checkpoint), format="onnx", imgsz=IMGSZ, batch=2, dynamic=True, out=out)


def test_slim_model_is_really_slimmer(slim_checkpoint):
    base, slim = load_model("yolov7-tiny.yaml"), load_model(str(slim_checkpoint))
    assert get_flops(slim, 640) < 0.7 * get_flops(base, 640)
    widths = lambda m: [c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)]  # noqa: E731
    assert sum(widths(slim)) < sum(widths(base))


@pytest.mark.slow
def test_slim_onnx_matches_pytorch_for_any_batch(slim_checkpoint, slim_onnx, coco8_images):
    model = load_model(str(slim_checkpoint))
    images = [preprocess(cv2.imread(str(f)), (IMGSZ, IMGSZ)) for f in coco8_images[:2]]
    noise = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    batch = np.concatenate([np.stack(images), noise])  # 3 images through an ONNX exported with batch 2: dynamic axis
    session = ort.InferenceSession(str(slim_onnx), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": batch})
    with torch.no_grad():
        expected = model(torch.from_numpy(batch))[0].numpy()
    anchors = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))
    assert got.shape == expected.shape == (3, 4 + 80, anchors)
    assert np.abs(got - expected).max() < 1e-3


def test_sidecar_and_metadata_describe_the_export(slim_checkpoint, slim_onnx):
    side = read_sidecar(slim_onnx)
    model = load_model(str(slim_checkpoint))
    assert side["format"] == "onnx" and side["precision"] == "fp32" and side["opset"] == 17
    assert side["imgsz"] == [IMGSZ, IMGSZ] and side["dynamic_batch"] and side["batch"] == 2
    assert side["strides"] == [8, 16, 32] and len(side["names"]) == 80
    assert side["gflops"] == pytest.approx(get_flops(model, [IMGSZ, IMGSZ]), abs=1e-3)
    assert side["params"] == sum(p.numel() for p in model.parameters())
    assert side["source"]["sha256"] == hashlib.sha256(slim_checkpoint.read_bytes()).hexdigest()
    meta = {p.key: p.value for p in onnx.load(str(slim_onnx)).metadata_props}
    assert meta["task"] == "detect" and meta["stride"] == "32" and meta["imgsz"] == f"[{IMGSZ}, {IMGSZ}]"


@pytest.mark.slow
def test_ultralytics_predicts_with_the_exported_onnx(slim_onnx, coco8_images):
    from ultralytics import YOLO

    # rect=False: Ultralytics takes any symbolic axis for a free H and W; this ONNX frees only the batch axis
    model = YOLO(str(slim_onnx), task="detect")
    result = model.predict(str(coco8_images[0]), imgsz=IMGSZ, rect=False, verbose=False)[0]
    assert result.orig_shape == cv2.imread(str(coco8_images[0])).shape[:2] and len(result.names) == 80


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(format="onnx", half=True), "apply to --format engine"),
        (dict(format="onnx", imgsz=100), "multiple of the model stride 32"),
        (dict(format="onnx", batch=0), "Batch must be >= 1"),
        (dict(format="engine", out_name="m.onnx"), "does not fit --format engine"),
        (dict(format="tflite"), "Unknown export format"),
    ],
)
def test_bad_requests_are_one_error_and_write_nothing(tmp_path, kwargs, message):
    out = tmp_path / kwargs.pop("out_name", "m.onnx" if kwargs["format"] != "engine" else "m.engine")
    with pytest.raises(YoloPruneError, match=message):
        export_model("yolov8n.yaml", out=out, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_engine_without_tensorrt_says_how_to_get_it(tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: this checks the message on machines without it")
    except ImportError:
        pass
    with pytest.raises(YoloPruneError, match=r"TensorRT cannot be imported \(No module named 'tensorrt'\)"):
        export_model("yolov8n.yaml", format="engine", half=True, out=tmp_path / "m.engine")
    assert list(tmp_path.iterdir()) == []  # it failed before writing the ONNX


@pytest.mark.slow
def test_cli_export_writes_model_and_sidecar(tmp_path):
    out = tmp_path / "n.onnx"
    done = subprocess.run([sys.executable, "-m", "yolo_prune", "export", "--model", "yolov8n.yaml", "--imgsz", "64",
                           "--out", str(out)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(str(out)) and out.is_file()
    assert json.loads((tmp_path / "n.onnx.json").read_text())["imgsz"] == [64, 64]
    bad = subprocess.run([sys.executable, "-m", "yolo_prune", "export", "--model", "yolov8n.yaml", "--imgsz", "65",
                          "--out", str(tmp_path / "b.onnx")], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "stride" in bad.stderr
