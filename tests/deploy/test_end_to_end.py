"""The on-device path checked end to end without a GPU: a COCO-trained model (the shared YOLOv5n checkpoint,
imported) exported to ONNX, run by the kit's detect.py with ONNX Runtime in place of TensorRT (same pre-processing,
numpy decoding and NMS), gives the detections of Ultralytics' predict on the PyTorch model."""

import json
import subprocess
import sys

import numpy as np
import pytest

IMGSZ = 320
N_IMAGES = 16


@pytest.fixture(scope="module")
def yolov5n_onnx(yolov5n_coco, tmp_path_factory):
    from yolo_prune.export import export_model

    onnx_file = tmp_path_factory.mktemp("onnx") / "yolov5n.onnx"
    return yolov5n_coco, export_model(yolov5n_coco, format="onnx", imgsz=IMGSZ, out=onnx_file)


@pytest.fixture(scope="module")
def image_folder(coco128, tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for image in sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:N_IMAGES]:
        (folder / image.name).symlink_to(image)
    return folder


def run_kit(kit_dir, *args):
    done = subprocess.run([sys.executable, str(kit_dir / "detect.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr


def kit_detections(detections_file, names):
    """{file name: (n, 6)} from detect.py's COCO result file (image ids = sorted positions, category = class + 1)."""
    by_id = {i: name for i, name in enumerate(sorted(names), 1)}
    out = {name: [] for name in names}
    for d in json.loads(detections_file.read_text()):
        x, y, w, h = d["bbox"]
        out[by_id[d["image_id"]]].append([x, y, x + w, y + h, d["score"], d["category_id"] - 1])
    return {k: np.array(v, dtype=float).reshape(-1, 6) for k, v in out.items()}


def assert_same_detections(ours, ref, atol_px=1.0):
    """Same number and classes, and each box within `atol_px` of its counterpart (matched one to one)."""
    assert len(ours) == len(ref)
    unused = list(range(len(ref)))
    for det in ours[np.argsort(-ours[:, 4])]:
        candidates = [j for j in unused if ref[j, 5] == det[5]]
        assert candidates, f"no reference detection of class {det[5]}"
        errors = [np.abs(ref[j, :4] - det[:4]).max() for j in candidates]
        best = candidates[int(np.argmin(errors))]
        assert min(errors) < atol_px, (det, ref[best])
        assert abs(ref[best, 4] - det[4]) < 1e-3
        unused.remove(best)


@pytest.mark.slow
def test_kit_detect_matches_ultralytics_predict(kit_dir, yolov5n_onnx, image_folder, tmp_path):
    from ultralytics import YOLO

    import yolo_prune  # noqa: F401  (installs our classes: the imported YOLOv5n holds them)

    checkpoint, onnx_file = yolov5n_onnx
    run_kit(kit_dir, "--model", onnx_file, "--images", image_folder, "--out", tmp_path / "results.json",
            "--save-detections", tmp_path / "dets.json", "--warmup", 1)  # fmt: skip
    files = sorted(image_folder.glob("*.jpg"))
    ours = kit_detections(tmp_path / "dets.json", [f.name for f in files])

    predictions = YOLO(str(checkpoint)).predict([str(f) for f in files], imgsz=IMGSZ, device="cpu", verbose=False)
    total = 0
    for file, pred in zip(files, predictions):
        boxes = pred.boxes
        ref = np.c_[boxes.xyxy.numpy(), boxes.conf.numpy(), boxes.cls.numpy()]
        assert_same_detections(ours[file.name], ref)
        total += len(ref)
    assert total > 3 * N_IMAGES  # a real detector: many boxes to compare
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["detections"] == total and results["images"] == N_IMAGES
    assert results["latency_ms"]["runs"] == results["end_to_end_ms"]["runs"] == N_IMAGES  # compute and with copies
    assert results["latency_ms"]["median_ms"] <= results["end_to_end_ms"]["median_ms"]
    assert results["gflops"] > 0 and results["precision"] == "fp32"  # from the export sidecar


@pytest.mark.slow
def test_kit_map_equals_host_pycocotools(kit_dir, yolov5n_onnx, image_folder, coco128, tmp_path):
    from yolo_prune.eval.coco import coco_metrics

    gt_file = coco128 / "annotations" / "instances_train2017_coco128.json"
    run_kit(kit_dir, "--model", yolov5n_onnx[1], "--images", image_folder, "--out", tmp_path / "results.json",
            "--coco-json", gt_file, "--save-detections", tmp_path / "dets.json", "--warmup", 0)  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["conf"] == 0.001 and results["settings"]["multi_label"]  # mAP settings
    gt = json.loads(gt_file.read_text())
    ids = sorted(img["id"] for img in gt["images"] if (image_folder / img["file_name"]).exists())
    host, _ = coco_metrics(gt, json.loads((tmp_path / "dets.json").read_text()), ids)
    assert results["coco"] == pytest.approx(host, abs=1e-12)
    assert results["coco"]["AP50-95"] > 0.2  # COCO-trained weights on COCO images
