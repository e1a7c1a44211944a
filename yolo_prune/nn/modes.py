"""Train/eval modes put back exactly after a temporary switch.

`model.train(was_training)` is not a restore: it sets every submodule to the same mode. A run that keeps its
BatchNorms in eval mode inside a training model (`--freeze-bn`) would silently train with batch statistics after the
first measurement that switched the model to eval and "back" (a pruning step's compensation, a quick validation).
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn


@contextmanager
def modes_restored(model: nn.Module):
    """Inside: switch modes freely; afterwards every module of `model` is back in the mode it had."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def eval_mode(model: nn.Module):
    """`model` in eval mode inside; every module's own mode back afterwards."""
    with modes_restored(model):
        model.eval()
        yield model
