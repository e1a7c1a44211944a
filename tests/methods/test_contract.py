"""The method contract, for every registered in-training method (a new method gets these for free): a real tiny
training run reaches its FLOPs target, slim == masked, a kill + resume ends exactly as the whole run, and the
method's options are saved (last.pt, the slim manifest) and restored on resume."""

import dataclasses
import shutil

import pytest
import torch
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils.torch_utils import get_flops

from yolo_prune.checkpoint import is_one_shot_prune
from yolo_prune.methods import get_method, list_methods
from yolo_prune.methods.base import option_owners
from yolo_prune.methods.settings import PruneSettings
from yolo_prune.safe_load import load
from yolo_prune.slim.slim import slim
from yolo_prune.train.finalize import STATE_ATTR
from yolo_prune.train.trainer import PruneTrainer

# 4 one-image batches an epoch, a step every 2; pruning steps at epochs 0.5, 0.8, 1.1, 1.4
RUN = dict(epochs=2, imgsz=64, batch=1, workers=0, plots=False, device="cpu", exist_ok=True, val=False, nbs=2,
           close_mosaic=0, mosaic=0.0, seed=0, deterministic=True)  # fmt: skip
CUT = 0.3


def non_default_options(method: str) -> dict:
    """Every option of the method moved off its default (to a valid value), so saving and restoring is visible."""
    cls = get_method(method).Options
    out = {}
    for f in dataclasses.fields(cls):
        value = f.default
        if isinstance(value, str):  # another of its choices
            choices = f.metadata.get("choices")
            choices = choices() if callable(choices) else choices or [value]
            moved = next((c for c in choices if c != value), value)
        else:
            moved = (not value) if isinstance(value, bool) else value + 1 if isinstance(value, int) else value * 0.9
        try:
            cls(**{**out, f.name: moved}).validate()
            out[f.name] = moved
        except ValueError:
            pass
    return out


class KillPoint:
    """Copies last.pt as the first epoch's save left it (what a kill during the second epoch leaves)."""

    def __init__(self, trainer, dest):
        self.dest = dest
        trainer.add_callback("on_model_save", self.on_save)

    def on_save(self, trainer):
        if trainer.epoch == 0:
            self.dest.parent.mkdir(parents=True)
            shutil.copy2(trainer.last, self.dest)


@pytest.fixture(scope="module", params=list_methods(one_shot=False))
def run(request, tmp_path_factory, coco8_yaml):
    method = request.param
    tmp = tmp_path_factory.mktemp(f"contract-{method}")
    options = non_default_options(method)
    settings = PruneSettings(flops=CUT, method=method, warmup_frac=0.1, prune_frac=0.7, steps_per_epoch=3,
                             options=options)  # fmt: skip
    trainer = PruneTrainer(overrides={**RUN, "model": "yolov8n.yaml", "data": str(coco8_yaml), "project": str(tmp),
                                      "name": "whole"}, prune=settings)  # fmt: skip
    snapshot = tmp / "killed" / "weights" / "last.pt"
    KillPoint(trainer, snapshot)
    trainer.train()
    return method, options, trainer, snapshot


def test_reaches_its_target(run):
    method, _, trainer, _ = run
    for path in (trainer.best, trainer.last):
        model, ckpt = load_checkpoint(str(path))
        assert 1 - get_flops(model, 640) / trainer.pruner.base_gflops == pytest.approx(CUT, abs=0.005), method
    assert trainer.pruner.final


def test_slim_equals_masked(run, coco8_images):
    import numpy as np
    from PIL import Image

    _, _, trainer, _ = run
    masked = trainer.ema.ema.float().eval()
    slim_model = slim(masked, trainer.pruner.graph, trainer.pruner.masks.masks).eval()
    images = [np.asarray(Image.open(p).convert("RGB").resize((64, 64)), np.float32) / 255 for p in coco8_images[:2]]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        a, b = masked(x)[0], slim_model(x)[0]
    assert (a - b).abs().max() < 1e-4


def test_options_saved_in_last_pt_and_the_slim_manifest(run):
    method, options, trainer, snapshot = run
    full = dataclasses.asdict(get_method(method).Options(**options))
    state = getattr(load(snapshot)["ema"], STATE_ATTR)
    assert state["pruner"]["settings"]["options"] == full
    best = load(trainer.best)
    manifest = best["yolo_prune"]
    assert manifest["method"] == method and manifest["options"] == full and manifest["settings"]["options"] == full
    assert not is_one_shot_prune(best)  # trained after its cuts: a further fine-tune freezes its BN statistics


@pytest.mark.slow
def test_resume_round_trip(run):
    method, options, trainer, snapshot = run
    resumed = PruneTrainer(overrides={"resume": str(snapshot), "model": str(snapshot),
                                      "save_dir": str(snapshot.parents[1])})  # fmt: skip
    resumed.train()
    assert resumed.prune_settings.options == dataclasses.asdict(resumed.pruner.method.options)
    assert resumed.pruner.method.options == get_method(method).Options(**options)
    (a, ca), (b, cb) = (load_checkpoint(str(t.last)) for t in (resumed, trainer))
    assert ca["yolo_prune"]["widths"] == cb["yolo_prune"]["widths"]
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sb), method  # the very same training, bit for bit


def test_option_names_are_unique_across_methods():
    seen = {}
    for key in list_methods():
        for f in dataclasses.fields(get_method(key).Options):
            assert f.name not in seen, f"option {f.name} of {key} also belongs to {seen[f.name]}"
            assert f.name not in {g.name for g in dataclasses.fields(PruneSettings)}
            assert f.metadata.get("help"), f"option {f.name} of {key} has no help text"
            seen[f.name] = key
    assert option_owners() == seen
