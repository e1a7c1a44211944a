"""`yolo-prune val`: one validation pass scored by pycocotools and by Ultralytics, on the right ground truth."""

import json
import subprocess
import sys

import pytest

from yolo_prune.errors import YoloPruneError
from yolo_prune.eval.coco import COCO_METRICS, evaluate, format_report

IMGSZ = 256


@pytest.fixture(scope="module")
def official_run(yolov5n_coco, coco128_linked, tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "val.json"
    return evaluate(str(yolov5n_coco), data=coco128_linked / "data.yaml", imgsz=IMGSZ, batch=32, json_out=out), out


@pytest.mark.slow
def test_coco_model_on_coco128_uses_the_official_json_and_agrees_with_ultralytics(official_run):
    result, out = official_run
    assert result["ground_truth"]["source"] == "official"
    assert result["ground_truth"]["file"].endswith("instances_train2017_coco128.json")
    assert result["images"] == 128 and result["instances"] == 929  # 939 annotations minus 10 crowd regions
    pc, ul = result["pycocotools"], result["ultralytics"]
    assert set(pc) == set(COCO_METRICS)
    assert 0.2 < pc["AP50-95"] < 0.45  # COCO-trained YOLOv5n on COCO images at 256 px
    # two implementations of the same metric on the same detections: close, not equal (interpolation, crowd)
    assert pc["AP50-95"] == pytest.approx(ul["mAP50-95"], abs=0.02)
    assert pc["AP50"] == pytest.approx(ul["mAP50"], abs=0.02)
    assert json.loads(out.read_text()) == result
    report = format_report(result)
    assert "pycocotools" in report and "ultralytics" in report and "Average Precision" in report


@pytest.mark.slow
def test_a_yolo_dataset_without_json_is_scored_on_its_labels(official_run, yolov5n_coco, coco128_layout):
    data = coco128_layout(("images", "labels")) / "data.yaml"  # coco128 without its annotations folder
    result = evaluate(str(yolov5n_coco), data=data, imgsz=IMGSZ, batch=32)
    assert result["ground_truth"]["source"] == "labels" and result["instances"] == 929
    official = official_run[0]
    assert result["ultralytics"] == official["ultralytics"]  # the same detections...
    for name in ("AP50-95", "AP50", "AP75", "AR100"):  # ...scored without crowd regions: nearly the same
        assert result["pycocotools"][name] == pytest.approx(official["pycocotools"][name], abs=0.01)


@pytest.mark.slow
def test_demo_dataset_default_and_class_mismatch(tmp_path):
    result = evaluate("yolov8n.yaml", imgsz=64, batch=32, json_out=tmp_path / "v.json")  # built with the 4 classes
    assert result["ground_truth"]["source"] == "labels" and result["images"] == 64
    assert set(result["pycocotools"]) == set(COCO_METRICS)
    from yolo_prune.nn.build import load_model

    with pytest.raises(YoloPruneError, match="predicts 80 classes but the dataset has 4"):
        evaluate(load_model("yolov8n.yaml"), imgsz=64)
    with pytest.raises(YoloPruneError, match="not an existing .yaml"):
        evaluate("yolov8n.yaml", data=tmp_path / "missing.yaml")


@pytest.mark.slow
def test_cli_val_reports_both_maps(tmp_path):
    done = subprocess.run([sys.executable, "-m", "yolo_prune", "val", "--model", "yolov8n.yaml", "--imgsz", "64",
                           "--json", str(tmp_path / "v.json")], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "pycocotools" in done.stdout and "ultralytics" in done.stdout and "mAP50-95" in done.stdout
    assert json.loads((tmp_path / "v.json").read_text())["ground_truth"]["source"] == "labels"
