"""One-shot `damage` (methods/oneshot_damage.py, train/post_training.py) on the real COCO YOLOv5n and real images:
its pruned model predicts closer to the dense one than L1's at the same cut, and less close without compensation."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from ultralytics.utils.torch_utils import get_flops

from yolo_prune import api
from yolo_prune.cli import main
from yolo_prune.export.calibration import preprocess
from yolo_prune.nn.build import load_model
from yolo_prune.train.compensate import Compensation

IMGSZ = 128
QUICK = dict(damage_images=8, damage_imgsz=IMGSZ, damage_steps=2)


def _raw(model, images):
    """The head's raw prediction maps (eval mode: running BN statistics, as deployed)."""
    with torch.no_grad():
        return [p.float() for p in model.eval()(images)[1]]


def _prediction_error(dense, pruned, images) -> float:
    """Normalised squared distance of the pruned model's raw predictions to the dense model's."""
    return float(np.mean([((p - d) ** 2).mean() / (d**2).mean() for p, d in zip(_raw(pruned, images),
                                                                              _raw(dense, images))]))  # fmt: skip


@pytest.fixture(scope="module")
def setting(yolov5n_official, coco8, coco128):
    """Measured on the coco8 images, judged on 8 other real images (coco128 images not in coco8)."""
    names = {p.name for p in (coco8 / "images" / "val").glob("*.jpg")}
    held = [p for p in sorted((coco128 / "images" / "train2017").glob("*.jpg")) if p.name not in names][-8:]
    images = torch.from_numpy(np.stack([preprocess(cv2.imread(str(p)), (IMGSZ, IMGSZ)) for p in held]))
    return yolov5n_official, coco8 / "images" / "val", load_model(yolov5n_official).float(), images


@pytest.fixture(scope="module")
def damage(setting, tmp_path_factory):
    weights, folder, _, _ = setting
    out = tmp_path_factory.mktemp("damage") / "d.pt"
    return api.prune(weights, flops=0.2, method="damage", data=folder, imgsz=IMGSZ, out=out, **QUICK)


def test_damage_predicts_closer_to_the_dense_model_than_l1(setting, damage, tmp_path):
    weights, _, dense, images = setting
    l1 = api.prune(weights, flops=0.2, method="l1", imgsz=IMGSZ, out=tmp_path / "l1.pt")
    assert Path(damage["out"]).is_file()
    assert get_flops(damage["model"], IMGSZ) == pytest.approx(l1["slim_gflops"], rel=0.01)
    assert damage["cut"] == pytest.approx(0.2, abs=0.01)
    near, far = _prediction_error(dense, damage["model"], images), _prediction_error(dense, l1["model"], images)
    assert near < 0.6 * far, (near, far)


def test_without_compensation_the_pruned_model_drifts_further(setting, damage, monkeypatch):
    weights, folder, dense, images = setting
    compensated = damage["model"]
    monkeypatch.setattr(Compensation, "step", lambda *a, **k: 0)  # the mechanism removed
    plain = api.prune(weights, flops=0.2, method="damage", data=folder, imgsz=IMGSZ, **QUICK)["model"]
    with_it, without = _prediction_error(dense, compensated, images), _prediction_error(dense, plain, images)
    assert with_it < 0.85 * without, (with_it, without)


def test_damage_without_data_is_one_clear_error(tmp_path, capsys):
    out = tmp_path / "out.pt"
    code = main(["prune", "--model", "yolov8n.yaml", "--flops", "0.3", "--method", "damage", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "give --data" in err and "Traceback" not in err and err.count("\n") == 1
    assert not out.exists()


def test_data_for_a_method_that_uses_no_images_is_one_clear_error(coco8, tmp_path, capsys):
    out = tmp_path / "out.pt"
    code = main(["prune", "--model", "yolov8n.yaml", "--flops", "0.3", "--data", str(coco8 / "images" / "val"),
                 "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "does not use images" in err and "Traceback" not in err and err.count("\n") == 1
    assert not out.exists()
