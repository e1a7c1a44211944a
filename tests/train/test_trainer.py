"""PruneTrainer inside the real Ultralytics training loop (tiny runs on coco8, CPU)."""

import csv

import numpy as np
import pytest
import torch
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils.torch_utils import get_flops, unwrap_model

from yolo_prune.methods.schedule import PruneSettings
from yolo_prune.train.trainer import PruneTrainer

# 4 batches an epoch of 1 image each; nbs=1 steps the optimizer every batch; no mosaic (its image buffer is state)
TINY = dict(epochs=3, imgsz=64, batch=1, workers=0, plots=False, device="cpu", exist_ok=True, val=True,
            close_mosaic=0, mosaic=0.0, nbs=1, seed=0, deterministic=True)  # fmt: skip


def make_trainer(tmp_path, data, name, method="effp", flops=0.37, cfg="yolov8n.yaml", **kw):
    settings = PruneSettings(flops=flops, method=method, warmup_frac=0.1, prune_frac=0.7, steps_per_epoch=3)
    overrides = {**TINY, "model": cfg, "data": str(data), "project": str(tmp_path), "name": name, **kw}
    return PruneTrainer(overrides=overrides, prune=settings)


class StepRecorder:
    """Records masks after every pruning step, and checks exact zeros after every optimizer step."""

    def __init__(self, trainer):
        self.masks, self.zero_checks = [], 0
        self.trainer = trainer
        trainer.add_callback("on_train_batch_end", self.on_batch_end)

    def on_batch_end(self, trainer):
        p = trainer.pruner
        if p.steps_done > len(self.masks):
            self.masks.append({k: v.copy() for k, v in p.masks.masks.items()})
        for model in (unwrap_model(trainer.model), trainer.ema.ema):  # after the optimizer step and EMA update
            modules = dict(model.named_modules())
            for name, keep in p.masks.norm_keep.items():
                bn = modules[name]
                assert bn.weight[~keep].abs().max() == 0 and bn.bias[~keep].abs().max() == 0
                self.zero_checks += 1


@pytest.fixture(scope="module")
def effp_run(tmp_path_factory, coco8_yaml):
    tmp = tmp_path_factory.mktemp("effp")
    trainer = make_trainer(tmp, coco8_yaml, "effp", plots=True)
    rec = StepRecorder(trainer)
    trainer.train()
    return trainer, rec


def test_masks_exactly_zero_in_model_and_ema(effp_run):
    trainer, rec = effp_run
    assert trainer.pruner.final and len(rec.masks) >= 4
    # from scratch: no teacher worth distilling from, no learned correlations to compensate with (the defaults)
    assert trainer.distill is None and trainer.pruner.compensation is None and trainer.prune_settings.freeze_bn is False
    assert rec.zero_checks > 0
    # the steps ranked channels by Taylor sensitivity measured in training, masked channels included
    sens = trainer.pruner.method.taylor.average()
    assert sens and all(np.isfinite(v).all() for v in sens.values())
    dead = {n: ~k.numpy() for n, k in trainer.pruner.masks.norm_keep.items()}
    assert any(sens[n][d].max() > 0 for n, d in dead.items())


def test_best_and_last_are_slim_and_meet_the_target(effp_run):
    trainer, _ = effp_run
    base = trainer.pruner.base_gflops
    for path in (trainer.best, trainer.last):
        model, ckpt = load_checkpoint(str(path))
        assert 1 - get_flops(model, 640) / base == pytest.approx(0.37, abs=0.005)
        assert ckpt["yolo_prune"]["method"] == "effp"
    log = (trainer.save_dir / "prune_log.csv").read_text()
    assert log.count("\n") == 1 + len(trainer.pruner.schedule.positions)  # header + one row per pruning step
    assert (trainer.save_dir / "prune_widths.png").stat().st_size > 10_000


def test_effp_regrows_channels(effp_run):
    trainer, rec = effp_run
    regrown = sum(int((new[k] & ~old[k]).sum()) for old, new in zip(rec.masks, rec.masks[1:]) for k in new)
    assert regrown > 0 and trainer.pruner.method.regrown_total == regrown
    last_two = rec.masks[-2:]
    assert not any((last_two[1][k] & ~last_two[0][k]).any() for k in last_two[1])  # regrowth decays to none


def test_asfp_prunes_in_steps_and_logs_its_scale(tmp_path, coco8_yaml):
    """In training (layers growing back: tests/methods/test_baseline_methods.py, measured in docs/results.md)."""
    trainer = make_trainer(tmp_path, coco8_yaml, "asfp", method="asfp")
    rec = StepRecorder(trainer)
    trainer.train()
    widths = np.array([[int(m[k].sum()) for k in sorted(m)] for m in rec.masks])
    assert (np.diff(widths, axis=0) < 0).any() and len(rec.masks) == len(trainer.pruner.schedule.positions)
    rows = list(csv.DictReader((trainer.save_dir / "prune_log.csv").open()))
    assert rows and all(float(r["sigma"]) >= 0 and 0 <= float(r["redundant"]) <= 1 for r in rows)
    assert not (trainer.save_dir / "prune_widths.png").exists()  # plots=False, as for Ultralytics' own plots
    model, _ = load_checkpoint(str(trainer.best))
    assert 1 - get_flops(model, 640) / trainer.pruner.base_gflops == pytest.approx(0.37, abs=0.005)


class Kill(Exception):
    pass


def test_resume_after_kill_gives_the_same_architecture(tmp_path, coco8_yaml):
    def widths(path):
        return torch.load(path, weights_only=False)["yolo_prune"]["widths"]

    whole = make_trainer(tmp_path, coco8_yaml, "whole", epochs=4, val=False)
    whole.train()

    killed = make_trainer(tmp_path, coco8_yaml, "killed", epochs=4, val=False)

    def kill(trainer):
        if trainer.epoch == 1:  # last.pt of epoch 2 is written; the pruning phase runs to epoch 2.8
            assert 0 < trainer.pruner.steps_done < len(trainer.pruner.schedule.positions)
            raise Kill

    killed.add_callback("on_fit_epoch_end", kill)
    with pytest.raises(Kill):
        killed.train()
    resumed = PruneTrainer(overrides={"resume": str(killed.last), "model": str(killed.last)})
    resumed.train()
    assert widths(resumed.last) == widths(whole.last)
    a, b = (load_checkpoint(str(t.last))[0].state_dict() for t in (resumed, whole))
    assert all(torch.equal(a[k], b[k]) for k in a)  # not just the same widths: the very same training
