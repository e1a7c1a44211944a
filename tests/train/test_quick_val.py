"""ctx.validate's quick validation against Ultralytics' own validator, on real detections."""

import pytest
from ultralytics.models.yolo.detect import DetectionValidator

from yolo_prune.safe_load import load_checkpoint
from yolo_prune.train.quick_val import QuickValidation


def test_quick_validation_is_ultralytics_validator_on_the_same_images(tmp_path, yolov5n_coco, coco8_yaml):
    model = load_checkpoint(yolov5n_coco)[0].float()
    args = dict(data=str(coco8_yaml), imgsz=160, batch=2, plots=False, device="cpu", workers=0)
    real = DetectionValidator(args=args, save_dir=tmp_path)
    reference = real(model=model)  # standalone: its own (fused) copy of the model
    assert reference["metrics/mAP50-95(B)"] > 0.05  # real detections, so agreement means something
    quick = QuickValidation(real.dataloader, real.data, real.args, "cpu", tmp_path)
    model.train()
    got = quick(model)
    assert model.training  # the model's mode is restored
    for key in ("metrics/mAP50-95(B)", "metrics/mAP50(B)", "metrics/precision(B)", "metrics/recall(B)"):
        assert got[key] == pytest.approx(reference[key], abs=1e-6), key
    assert quick.images(2) == 2 and quick.images(3) == quick.images(0) == quick.images(100) == 4
    first = [quick(model, images=2)["metrics/mAP50-95(B)"] for _ in range(3)]
    assert first[0] == first[1] == first[2]  # always the first images (the loader's endless iterator is not used)
    assert first[0] != pytest.approx(reference["metrics/mAP50-95(B)"], abs=1e-3)
    again = real(model=model)  # and Ultralytics' own pass still sees its images
    assert again["metrics/mAP50-95(B)"] == pytest.approx(reference["metrics/mAP50-95(B)"], abs=1e-9)
