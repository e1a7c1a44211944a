"""Interrupted pruning runs: killed at several points and resumed, they end exactly as the uninterrupted run; every
checkpoint write is atomic; what a run writes loads under the restricted loader and ULTRALYTICS_SAFE_LOAD=1.

A kill leaves the last.pt of that moment: here one uninterrupted run copies its last.pt at each kill point (what a
`kill -9` would have left), and each copy is resumed in a run folder of its own.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from ultralytics.models.yolo.detect import DetectionTrainer

from yolo_prune.methods.schedule import PruneSettings
from yolo_prune.safe_load import load_checkpoint
from yolo_prune.train.trainer import PruneTrainer

# 4 batches an epoch of one image; nbs=3: a step sums 3 batches, across epoch ends; mosaic on (its image buffer is
# state), closed for the last 2 epochs (a loader reset); validation every epoch
RUN = dict(epochs=4, imgsz=64, batch=1, workers=0, plots=False, device="cpu", exist_ok=True, val=True, nbs=3,
           mosaic=1.0, close_mosaic=2, seed=0, deterministic=True)  # fmt: skip
# pruning steps at epochs 0.7, 1.0, ..., 2.8 (8 steps)
SETTINGS = PruneSettings(flops=0.37, method="effp", warmup_frac=0.1, prune_frac=0.7, steps_per_epoch=3)


class Kills:
    """Copies last.pt at three kill points of a running trainer (each leaves the checkpoint of an earlier epoch end)."""

    def __init__(self, trainer, folder):
        self.trainer, self.folder, self.saved, self.steps = trainer, folder, {}, 0
        trainer.add_callback("on_train_batch_end", self.on_batch_end)
        trainer.add_callback("on_val_start", self.on_val_start)

    def keep(self, name):
        if name not in self.saved:
            dest = self.folder / name / "weights" / "last.pt"
            dest.parent.mkdir(parents=True)
            shutil.copy2(self.trainer.last, dest)
            self.saved[name] = dest

    def on_batch_end(self, trainer):
        p = trainer.pruner
        if trainer.epoch == 1 and 0 < p.steps_done < len(p.schedule.positions):
            self.keep("between steps")  # resumes from the end of epoch 1 (1-based)
        if trainer.epoch == 2 and p.steps_done > self.steps:
            self.keep("right after a step")  # resumes from the end of epoch 2
        self.steps = p.steps_done

    def on_val_start(self, validator):
        if self.trainer.epoch == 3 and self.trainer.pruner.final:
            self.keep("during validation")  # resumes from the end of epoch 3


@pytest.fixture(scope="module")
def whole(tmp_path_factory, coco8_yaml):
    tmp = tmp_path_factory.mktemp("resume")
    trainer = PruneTrainer(overrides={**RUN, "model": "yolov8n.yaml", "data": str(coco8_yaml), "project": str(tmp),
                                      "name": "whole"}, prune=SETTINGS)  # fmt: skip
    kills = Kills(trainer, tmp / "killed")
    trainer.train()
    assert sorted(kills.saved) == ["between steps", "during validation", "right after a step"]
    return trainer, kills.saved


def final_state(path):
    _, ckpt = load_checkpoint(path)
    return ckpt["yolo_prune"]["widths"], ckpt["model"].float().state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["between steps", "right after a step"])
def test_resumed_run_ends_exactly_as_the_uninterrupted_one(kill, whole):
    trainer, saved = whole
    snapshot = saved[kill]
    resumed = PruneTrainer(overrides={"resume": str(snapshot), "model": str(snapshot),
                                      "save_dir": str(snapshot.parents[1])})  # fmt: skip
    resumed.train()
    (widths, weights), (ref_widths, ref_weights) = final_state(resumed.last), final_state(trainer.last)
    assert widths == ref_widths
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights)  # the very same training, bit for bit


@pytest.mark.slow
def test_resume_from_the_cli_api_prints_the_summary(whole, capsys):
    from yolo_prune.api import train

    trainer, saved = whole
    snapshot = saved["during validation"]
    result = train(resume=str(snapshot), save_dir=str(snapshot.parents[1]))
    out = capsys.readouterr().out
    assert "base" in out and "slim" in out and "GFLOPs" in out  # the base-vs-slim table, after a resumed run too
    assert [r["model"] for r in result["rows"]] == ["base", "slim"]
    assert final_state(result["last"])[0] == final_state(trainer.last)[0]


def test_checkpoints_load_with_the_restricted_loader_and_under_ultralytics_safe_load(whole, tmp_path):
    trainer, saved = whole
    mid_run = saved["right after a step"]  # carries the stashed pruning and training state
    for path in (mid_run, trainer.last, trainer.best):
        load_checkpoint(path)
    code = textwrap.dedent(f"""
        from ultralytics.nn.tasks import load_checkpoint
        for path in {[str(mid_run), str(trainer.last), str(trainer.best)]!r}:
            load_checkpoint(path)
        print("loaded")
    """)  # fmt: skip
    env = {**os.environ, "ULTRALYTICS_SAFE_LOAD": "1", "YOLO_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0 and "loaded" in run.stdout, run.stderr[-3000:]


class Killed(BaseException):
    """What a kill does to a write: it stops half way (BaseException: no handler of the trainer swallows it)."""


def half_write_then_die(self, data):
    with open(self, "wb") as f:
        f.write(data[: len(data) // 2])
    raise Killed


def test_a_kill_while_saving_leaves_the_previous_last_pt_whole(whole, monkeypatch):
    trainer, _ = whole
    before = trainer.last.read_bytes()
    monkeypatch.setattr(type(trainer.last), "write_bytes", half_write_then_die)
    with pytest.raises(Killed):
        trainer.save_model()
    monkeypatch.undo()
    assert trainer.last.read_bytes() == before
    load_checkpoint(trainer.last)
    assert sorted(p.name for p in trainer.wdir.iterdir()) == ["best.pt", "last.pt"]  # no partial file left


def test_ultralytics_save_model_writes_where_the_trainer_points(whole, tmp_path):
    """Pins the upstream behaviour the atomic save relies on: save_model writes `wdir`, `last` and `best`."""
    trainer, _ = whole
    real = trainer.wdir, trainer.last, trainer.best
    trainer.wdir, trainer.last, trainer.best = tmp_path, tmp_path / "l.pt", tmp_path / "b.pt"
    try:
        trainer.best_fitness = trainer.fitness  # so best.pt is written too
        DetectionTrainer.save_model(trainer)
    finally:
        trainer.wdir, trainer.last, trainer.best = real
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.pt", "l.pt"]
    assert sorted(p.name for p in trainer.wdir.iterdir()) == ["best.pt", "last.pt"]


def test_ultralytics_step_cadence_is_what_the_resume_aligns():
    """Pins the upstream loop the exact resume relies on: after a resume the step cadence restarts at
    `last_opt_step = -1`, the step decision is `ni - last_opt_step >= self.accumulate`, and `preprocess_batch`
    runs after the warm-up has set `accumulate` and before that decision."""
    import inspect

    from ultralytics.engine.trainer import BaseTrainer

    src = inspect.getsource(BaseTrainer._do_train)
    warmup, preprocess = src.index("self.accumulate = max(1"), src.index("self.preprocess_batch(batch)")
    decision = src.index("if ni - last_opt_step >= self.accumulate:")
    assert "last_opt_step = -1" in src[: src.index("while True")] and warmup < preprocess < decision


@pytest.mark.parametrize("make", [lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
                                  lambda p: torch.optim.AdamW(p, lr=0.01)], ids=["SGD", "AdamW"])  # fmt: skip
def test_the_optimizer_resumes_exactly_from_ultralytics_copy_and_the_entries_it_converts(make):
    """last.pt keeps the optimizer once: Ultralytics' copy (SGD's momentum converted to FP16, Adam's moments kept
    FP32) plus, in our state, the FP32 values of exactly the entries that copy converts."""
    from copy import deepcopy

    from ultralytics.utils.torch_utils import convert_optimizer_state_dict_to_fp16

    from yolo_prune.train.resume import optimizer_rest, restore_optimizer

    torch.manual_seed(0)
    net = torch.nn.Linear(7, 5)
    optimizer = make(net.parameters())
    for _ in range(3):
        net(torch.randn(4, 7)).square().sum().backward()
        optimizer.step()
    exact = optimizer.state_dict()
    ultralytics_copy = convert_optimizer_state_dict_to_fp16(deepcopy(exact))
    rest = optimizer_rest(optimizer)
    resumed = make(net.parameters())
    resumed.load_state_dict(ultralytics_copy)  # what Ultralytics' resume does
    sgd = isinstance(optimizer, torch.optim.SGD)
    drifted = any(not torch.equal(v, resumed.state_dict()["state"][i][k]) for i, e in exact["state"].items()
                  for k, v in e.items() if torch.is_tensor(v))  # fmt: skip
    assert drifted == sgd  # FP16 rounding of the momentum: the reason the rest is kept at all
    assert all(set(e) == ({"momentum_buffer"} if sgd else set()) for e in rest.values())
    restore_optimizer(resumed, rest)
    state = resumed.state_dict()["state"]
    assert all(torch.equal(v, state[i][k]) for i, e in exact["state"].items() for k, v in e.items())
    earlier = make(net.parameters())  # a last.pt of an earlier version carries the whole state: loaded as it is
    restore_optimizer(earlier, deepcopy(exact))
    state = earlier.state_dict()["state"]
    assert all(torch.equal(v, state[i][k]) for i, e in exact["state"].items() for k, v in e.items())
