"""yolo-prune used the Ultralytics way: Ultralytics' own CLI through `yolo-prune yolo`, pruning through
`YOLO(...).train(trainer=prune_trainer(...))`, and `yolo_prune.train(...)` (tiny runs on coco8, CPU)."""

import os
import subprocess
import sys

import pytest
from ultralytics.utils.torch_utils import get_flops

import yolo_prune
from yolo_prune.errors import YoloPruneError
from yolo_prune.nn.build import load_model

# 4 batches an epoch of 1 image each (coco8 train), no mosaic: pruning steps land inside a 2-epoch run
TINY = dict(imgsz=64, batch=1, workers=0, plots=False, device="cpu", exist_ok=True, close_mosaic=0, mosaic=0.0,
            nbs=1, seed=0, amp=False)  # fmt: skip
SCHEDULE = dict(warmup_frac=0.1, prune_frac=0.7, steps_per_epoch=2)


def test_ultralytics_cli_through_yolo_prune_and_the_settings_file_untouched(coco8_yaml, coco8_images, tmp_path):
    """`yolo-prune yolo train/predict ...` is Ultralytics' CLI with our models; Ultralytics' settings file (at
    YOLO_CONFIG_DIR, written by Ultralytics itself on its first import) stays byte for byte the same."""
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "config"), "YOLO_OFFLINE": "1"}
    settings = tmp_path / "config" / "Ultralytics" / "settings.json"
    first = subprocess.run([sys.executable, "-c", "import ultralytics"], env=env, capture_output=True, text=True)
    assert first.returncode == 0 and settings.is_file(), first.stderr[-2000:]
    written = settings.read_bytes()

    def yolo(*args):
        cmd = [sys.executable, "-m", "yolo_prune", "yolo", *args, "device=cpu", "imgsz=64", f"project={tmp_path}"]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=900)
        assert run.returncode == 0, run.stderr[-3000:]

    yolo("train", "model=yolov7-tiny-idetect.yaml", f"data={coco8_yaml}", "epochs=1", "batch=4", "workers=0",
         "plots=False", "amp=False", "name=train")  # fmt: skip
    best = tmp_path / "train" / "weights" / "best.pt"
    assert type(load_model(best)).__name__ == "AnchorDetectionModel"
    yolo("predict", f"model={best}", f"source={coco8_images[0]}", "conf=0.0", "max_det=5", "save_txt=True",
         "name=predict")  # fmt: skip
    labels = list((tmp_path / "predict" / "labels").glob("*.txt"))
    assert len(labels) == 1 and len(labels[0].read_text().splitlines()) == 5
    assert settings.read_bytes() == written


def test_cli_passthrough_refuses_arguments_with_spaces(capsys):
    from yolo_prune.cli import main

    assert main(["yolo", "predict", "source=my images/a.jpg"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a space" in err


def test_pruning_through_ultralytics_model_train(coco8_yaml, tmp_path):
    from ultralytics import YOLO

    trainer = yolo_prune.prune_trainer(flops=0.3, method="effp", **SCHEDULE)
    assert trainer.settings.flops == 0.3 and issubclass(trainer, yolo_prune.PruneTrainer)
    yolo = YOLO("yolov7-tiny.yaml")
    base = get_flops(yolo.model, 640)
    yolo.train(trainer=trainer, data=str(coco8_yaml), epochs=2, val=False, project=str(tmp_path), name="p", **TINY)
    assert yolo.trainer.pruner.final
    slim = load_model(tmp_path / "p" / "weights" / "last.pt")
    assert 1 - get_flops(slim, 640) / base == pytest.approx(0.3, abs=0.005)


def test_prune_trainer_refuses_unknown_or_bad_settings():
    with pytest.raises(YoloPruneError, match=r"Unknown pruning setting\(s\) \['flop'\]"):
        yolo_prune.prune_trainer(flop=0.3)
    with pytest.raises(YoloPruneError, match="--flops must be a fraction"):
        yolo_prune.prune_trainer(flops=1.5)


def test_top_level_train_even_after_the_train_subpackage_is_imported(coco8_yaml, tmp_path):
    import yolo_prune.train.trainer  # noqa: F401  (binds the subpackage as yolo_prune.train: it stays callable)

    result = yolo_prune.train(cfg="yolov8n.yaml", flops=0.2, data=str(coco8_yaml), epochs=1, val=False,
                              project=str(tmp_path), name="t", **SCHEDULE, **TINY)  # fmt: skip
    assert [r["model"] for r in result["rows"]] == ["base", "slim"]
    base, slim = (r["gflops"] for r in result["rows"])
    assert 1 - slim / base == pytest.approx(0.2, abs=0.005)
