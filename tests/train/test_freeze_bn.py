"""--freeze-bn in the real trainer: every BatchNorm normalises with its running statistics while training, those
statistics stay the starting model's, the teacher normalises the same way, and the default follows the run (on for a
fine-tune from weights, off for the fine-tune of a one-shot prune; pruning and from-scratch runs resolve it off:
tests/train/test_pretrained_run.py, tests/train/test_trainer.py)."""

import inspect
import shutil

import pytest
import torch
import ultralytics
from torch import nn
from ultralytics import YOLO
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.utils.torch_utils import unwrap_model

from yolo_prune import api
from yolo_prune.checkpoint import save_checkpoint
from yolo_prune.methods.schedule import PruneSettings
from yolo_prune.nn.build import load_model
from yolo_prune.train.trainer import PruneTrainer

TINY = dict(epochs=1, imgsz=64, batch=2, workers=0, plots=False, device="cpu", exist_ok=True, val=False,
            close_mosaic=0, mosaic=0.0, seed=0, deterministic=True)  # fmt: skip


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A dense yolov8n checkpoint to fine-tune from (untrained: its weights are not what these tests are about)."""
    return save_checkpoint(load_model("yolov8n.yaml"), tmp_path_factory.mktemp("start") / "start.pt", {}, key="test")


@pytest.fixture(scope="module")
def one_shot(tmp_path_factory):
    """A yolov8n checkpoint written by a one-shot prune (`yolo-prune prune`)."""
    out = tmp_path_factory.mktemp("one_shot") / "one_shot.pt"
    api.prune("yolov8n.yaml", flops=0.1, out=out)
    return out


class ModeRecorder:
    """At every training batch: whether any BatchNorm normalised with batch statistics, and the kd loss."""

    def __init__(self, trainer):
        self.batch_statistics, self.kd = [], []
        trainer.add_callback("on_train_batch_end", self.on_batch_end)

    def on_batch_end(self, trainer):
        bns = [m for m in unwrap_model(trainer.model).modules() if isinstance(m, nn.BatchNorm2d)]
        self.batch_statistics.append(any(m.training for m in bns))
        kd = (trainer.loss_items or {}).get("kd_loss")
        self.kd.append(None if kd is None else float(kd))


def run(tmp_path, coco8_yaml, model, name, **settings):
    overrides = {**TINY, "model": str(model), "data": str(coco8_yaml), "project": str(tmp_path), "name": name}
    trainer = PruneTrainer(overrides=overrides, prune=PruneSettings(**settings))
    recorder = ModeRecorder(trainer)
    trainer.train()
    return trainer, recorder


def running_statistics(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


@pytest.fixture(scope="module")
def fine_tune(tmp_path_factory, coco8_yaml, start):
    """A 2-epoch fine-tune from weights with the defaults, and the last.pt a kill during its second epoch leaves."""
    tmp = tmp_path_factory.mktemp("fine_tune")
    before = running_statistics(load_model(start))
    overrides = {**TINY, "epochs": 2, "model": str(start), "data": str(coco8_yaml), "project": str(tmp),
                 "name": "whole"}  # fmt: skip
    trainer = PruneTrainer(overrides=overrides, prune=PruneSettings())
    rec = ModeRecorder(trainer)
    killed = tmp / "killed" / "weights" / "last.pt"

    def keep_last(t):
        if t.epoch == 1 and not killed.exists():
            killed.parent.mkdir(parents=True)
            shutil.copy2(t.last, killed)

    trainer.add_callback("on_train_epoch_start", keep_last)
    trainer.train()
    return trainer, rec, before, killed


def test_fine_tuning_from_weights_freezes_the_statistics_by_default(fine_tune):
    trainer, rec, before, _ = fine_tune
    assert trainer.prune_settings.freeze_bn is True and rec.batch_statistics and not any(rec.batch_statistics)
    # the teacher normalises like the student, so the first batch (before any step changed the student) matches
    assert rec.kd[0] == 0.0 and not any(m.training for m in trainer.distill.teacher.modules()
                                          if isinstance(m, nn.BatchNorm2d))  # fmt: skip
    after = running_statistics(trainer.ema.ema)
    assert all(torch.allclose(before[k].float(), after[k].float()) for k in before)


def test_a_resumed_fine_tune_keeps_its_statistics_frozen(fine_tune):
    killed = fine_tune[3]
    resumed = PruneTrainer(overrides={"resume": str(killed), "model": str(killed), "save_dir": str(killed.parents[1])})
    rec = ModeRecorder(resumed)
    resumed.train()
    assert resumed.prune_settings.freeze_bn is True and rec.batch_statistics and not any(rec.batch_statistics)


def test_a_one_shot_prune_fine_tunes_with_batch_statistics_by_default(tmp_path, coco8_yaml, one_shot):
    """Through the Python API the trainer gets the model built; it reads the file's manifest to tell."""
    model = YOLO(str(one_shot))
    model.add_callback("on_train_start", lambda t: setattr(t, "recorder", ModeRecorder(t)))
    model.train(trainer=PruneTrainer, data=str(coco8_yaml), project=str(tmp_path), name="api", **TINY)
    trainer = model.trainer
    assert trainer.prune_settings.freeze_bn is False and trainer.recorder.batch_statistics
    assert all(trainer.recorder.batch_statistics)
    assert trainer.recorder.kd[0] == 0.0  # teacher and student both on batch statistics


def test_freeze_bn_switches_on_for_a_one_shot_prune(tmp_path, coco8_yaml, one_shot):
    trainer, rec = run(tmp_path, coco8_yaml, one_shot, "on", freeze_bn=True)
    assert rec.batch_statistics and not any(rec.batch_statistics)


def test_ultralytics_switches_to_train_mode_through_model_train_every_epoch():
    """Pins upstream: `_model_train` (an internal) is where each epoch enters train mode, after the epoch-start
    callbacks; Ultralytics itself keeps the BNs of frozen layers in eval mode there."""
    assert ultralytics.__version__ == "8.4.190", "re-check this pin for another Ultralytics version"
    loop = inspect.getsource(BaseTrainer._do_train)
    assert loop.index('self.run_callbacks("on_train_epoch_start")') < loop.index("self._model_train()")
    assert "m.eval()" in inspect.getsource(BaseTrainer._model_train)


def test_pruning_with_frozen_statistics_keeps_them_frozen_after_each_step(tmp_path, coco8_yaml, start):
    """Compensation's eval-mode forward at a pruning step used to put every BN back into train mode (batch
    statistics) for the rest of the epoch (nn/modes.py)."""
    trainer, rec = run(tmp_path, coco8_yaml, start, "pruned", flops=0.1, freeze_bn=True, compensate=True,
                       steps_per_epoch=2, warmup_frac=0.0, prune_frac=0.5)  # fmt: skip
    assert trainer.pruner.steps_done >= 1 and trainer.prune_settings.compensate is True
    assert len(rec.batch_statistics) >= 2 and not any(rec.batch_statistics)
