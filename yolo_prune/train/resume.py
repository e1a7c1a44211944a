"""Interrupted runs: a checkpoint to resume from is checked first, and a resumed run continues exactly.

Ultralytics writes last.pt once per epoch and resumes at the next epoch's start, so a run killed anywhere in epoch
e+1 (between pruning steps, right after one, during validation) resumes from the end of epoch e. To continue exactly
where the uninterrupted run went on, last.pt carries, beyond Ultralytics' own state and the pruning state:
- the random streams (torch, numpy, python, the sampler's generator) as they were after epoch e;
- gradients accumulated since the last optimizer step (with `nbs > batch`, the last batches of an epoch are summed
  into the first step of the next), and the batch index of that step: Ultralytics restarts its step cadence on
  resume (`last_opt_step = -1`), so until the first step the resumed run's `accumulate` is offset to match it;
- the mosaic buffer (indices of recently loaded images that mosaic draws from), reloaded in order.
With workers=0 that is all the state there is (tested at several kill points); worker processes keep their own
augmentation streams, which cannot be restored.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from ultralytics.utils.torch_utils import unwrap_model

from ..errors import YoloPruneError

STAGING = ".staging"  # folder inside weights/ where checkpoints are written before they replace the old ones


# -- a checkpoint to resume from ---------------------------------------------------------------------------------------
def resume_checkpoint(resume) -> tuple[Path, dict]:
    """The last.pt to resume (`True`: the newest under the working directory, as Ultralytics picks) and its contents,
    or one clear error: missing, not a checkpoint, truncated, from a finished run."""
    from ultralytics.utils.files import get_latest_run

    from ..safe_load import load

    if resume is True and not get_latest_run():
        raise YoloPruneError("Nothing to resume: no last.pt under the working directory; give the run's checkpoint, "
                             "e.g. --resume runs/detect/train/weights/last.pt.")  # fmt: skip
    path = Path(get_latest_run() if resume is True else resume)
    if not path.is_file():
        raise YoloPruneError(f"Cannot resume from '{path}': no such file; give the last.pt of the run to continue "
                             "(runs/detect/<name>/weights/last.pt).")  # fmt: skip
    ckpt = load(path)  # refuses foreign code, text, truncated files
    args = ckpt.get("train_args") if isinstance(ckpt, dict) else None
    if not isinstance(args, dict) or not isinstance(args.get("epochs"), int):
        raise YoloPruneError(f"Cannot resume from '{path}': it is not a last.pt written by training (no training "
                             "state); start a new run with --weights to train from it.")  # fmt: skip
    stopped = ckpt.get("epoch", -1) + 1  # epochs done; -1 once Ultralytics stripped the finished checkpoint
    if ckpt.get("ema") is None or ckpt.get("optimizer") is None or not 0 < stopped < args["epochs"]:
        raise YoloPruneError(f"Cannot resume from '{path}': that run finished (its last.pt keeps no optimizer state "
                             "to continue); start a new run with --weights to train it further.")  # fmt: skip
    return path, ckpt


# -- what last.pt carries for an exact continuation --------------------------------------------------------------------
class Cadence:
    """Where the optimizer steps: the batch index of the last step, and the resumed run's pending alignment."""

    def __init__(self):
        self.batch = 0  # index of the current batch in its epoch
        self.updates = None  # EMA update count after the last batch (one per optimizer step)
        self.last_step = None  # global batch index (Ultralytics' `ni`) of the last optimizer step
        self.align_to = None  # resumed run: last_step of the killed run, until the first step here
        self.accumulate = None  # the trainer's own `accumulate`, while an offset one is in place


def capture(trainer) -> dict:
    """The state beyond Ultralytics' own that an exact continuation needs, at the end of an epoch."""
    model = unwrap_model(trainer.model)
    dataset = getattr(trainer.train_loader, "dataset", None)
    return {
        "rng": _rng_state(trainer.train_loader),
        "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None},
        "last_step": trainer.cadence.last_step,
        "mosaic_buffer": list(getattr(dataset, "buffer", None) or []),
    }


def restore(trainer, state: dict) -> None:
    """At the first epoch start after a resume (Ultralytics has zeroed the gradients): put the captured state back."""
    loader, model = trainer.train_loader, unwrap_model(trainer.model)
    closes_now = _closes_mosaic_now(trainer)
    if "rng" in state:
        _set_rng_state(state["rng"], loader, fresh_iterator=closes_now is True)
    if closes_now == "again" and loader.num_workers == 0:
        # The killed run reset its loader when mosaic closed and kept that iterator; Ultralytics resets once more in
        # the first resumed epoch. Skip that one: with workers=0 the in-process iterator sees the closed dataset.
        loader.reset = lambda: loader.__dict__.pop("reset", None)
    params = dict(model.named_parameters())
    for name, grad in state.get("grads", {}).items():
        params[name].grad = grad.to(params[name].device).clone()
    trainer.cadence.align_to = state.get("last_step")
    dataset = getattr(loader, "dataset", None)
    if state.get("mosaic_buffer") and hasattr(dataset, "buffer"):
        dataset.buffer.clear()
        for i in state["mosaic_buffer"]:  # reloading in order rebuilds the buffer and its cached images
            dataset.load_image(i)


def _closes_mosaic_now(trainer):
    """True if the killed run closed mosaic in this very epoch, "again" if it had closed it before, else False.

    Ultralytics closes mosaic (and resets the loader) in the first epoch of the last `close_mosaic`, and again in the
    first epoch of a resumed run inside that phase.
    """
    n = trainer.args.close_mosaic
    first = max(trainer.epochs - n, 0)
    if not n or trainer.epoch < first:
        return False
    return True if trainer.epoch == first else "again"


def align_step(trainer) -> None:
    """Before Ultralytics decides whether to step (`ni - last_opt_step >= accumulate`, last_opt_step -1 after a
    resume): offset `accumulate` so the decision is the killed run's (`ni - last_step >= accumulate`)."""
    c = trainer.cadence
    if c.align_to is not None:
        c.accumulate = trainer.accumulate
        trainer.accumulate = c.accumulate + c.align_to + 1


def on_epoch_start(trainer) -> None:
    trainer.cadence.batch = 0
    trainer.cadence.updates = trainer.ema.updates


def on_batch_end(trainer) -> None:
    c = trainer.cadence
    if c.accumulate is not None:
        trainer.accumulate, c.accumulate = c.accumulate, None
    updates = trainer.ema.updates
    if updates != c.updates:  # an optimizer step (one EMA update each) ran in this batch
        c.last_step = c.batch + len(trainer.train_loader) * trainer.epoch
        c.align_to = None
    c.updates = updates
    c.batch += 1


def optimizer_rest(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state that Ultralytics' own copy in last.pt does not keep exactly: {param index: {name: tensor}}.

    Ultralytics stores the whole optimizer state, converting some entries to FP16 (SGD's momentum; Adam's moments and
    step stay FP32). Only the converted entries are stored again, in FP32, which keeps Adam(W) checkpoints a quarter
    smaller. Which entries it converts is asked of its own converter, not assumed.
    """
    from ultralytics.utils.torch_utils import convert_optimizer_state_dict_to_fp16

    state = optimizer.state_dict()["state"]
    pairs = [(k, v) for entries in state.values() for k, v in entries.items()]
    names = {k for k, v in pairs if torch.is_tensor(v) and v.is_floating_point()}
    probe = convert_optimizer_state_dict_to_fp16({"state": {0: {k: torch.zeros(1) for k in names}}})["state"][0]
    converted = {k for k in names if probe[k].dtype != torch.float32}
    return {i: {k: v.detach().clone() for k, v in entries.items() if k in converted} for i, entries in state.items()}


def restore_optimizer(optimizer: torch.optim.Optimizer, rest: dict) -> None:
    """Put the exact entries of `optimizer_rest` back into the optimizer Ultralytics has resumed from its copy.
    A last.pt of an earlier version carries the whole optimizer state instead, which is loaded as it is."""
    if "param_groups" in rest:
        optimizer.load_state_dict(rest)
        return
    full = optimizer.state_dict()
    for i, entries in rest.items():
        full["state"][int(i)].update(entries)
    optimizer.load_state_dict(full)


def _rng_state(loader) -> dict:
    generator = getattr(getattr(loader, "sampler", None), "generator", None)
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "sampler": generator.get_state() if generator is not None else None,
    }


def _set_rng_state(state: dict, loader, fresh_iterator: bool = False) -> None:
    """Restore the streams; `fresh_iterator`: the killed run, too, started this epoch on a new loader iterator."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    sampler = getattr(loader, "sampler", None)
    generator = getattr(sampler, "generator", None)
    if generator is None or state["sampler"] is None:
        return
    if not fresh_iterator and getattr(loader, "iterator", ...) is None:
        loader.iterator = loader._get_iterator()  # creating it draws a base seed: do that before restoring
    generator.set_state(state["sampler"])
    # The killed run's persistent iterator lets RandomSampler draw one more permutation (for its `num_samples % n`
    # tail) before the next epoch's; a fresh iterator would not, so draw it here.
    if not fresh_iterator and isinstance(sampler, torch.utils.data.RandomSampler) and not sampler.replacement:
        torch.randperm(len(sampler.data_source), generator=generator)


# -- atomic checkpoints ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def staged_weights(trainer, copy_existing: bool = False):
    """Let Ultralytics write (or rewrite) its checkpoints in a staging folder, then move each into weights/ with one
    rename, last.pt last: a kill at any moment leaves every previous checkpoint whole.

    Ultralytics' save_model and final_eval write `trainer.wdir`, `trainer.last` and `trainer.best` in place; they
    are pointed into the staging folder for the duration (`copy_existing`: with copies of the current files).
    """
    real = trainer.wdir, trainer.last, trainer.best
    stage = real[0] / STAGING
    shutil.rmtree(stage, ignore_errors=True)  # what a killed save left behind
    stage.mkdir(parents=True)
    if copy_existing:
        for f in (real[1], real[2]):
            if f.exists():
                shutil.copy2(f, stage / f.name)
    trainer.wdir, trainer.last, trainer.best = stage, stage / real[1].name, stage / real[2].name
    try:
        yield
        for f in sorted(stage.iterdir(), key=lambda f: f.name == real[1].name):
            os.replace(f, real[0] / f.name)
    finally:
        trainer.wdir, trainer.last, trainer.best = real
        shutil.rmtree(stage, ignore_errors=True)
