"""The detection loss of a model on cached training batches: what `ctx.loss` measures for the methods."""

from __future__ import annotations

import torch

from ..nn.modes import eval_mode
from .distill import DistilledCriterion


@torch.no_grad()
def detection_loss(model: torch.nn.Module, batches: list[dict]) -> float:
    """Mean detection loss per image on cached batches (images as uint8): Ultralytics' criterion, eval mode.

    The stock criterion only: distillation's term measures closeness to the teacher, not detection.
    """
    criterion = model.criterion if getattr(model, "criterion", None) is not None else model.init_criterion()
    if isinstance(criterion, DistilledCriterion):
        criterion = criterion.base
    device = next(model.parameters()).device
    total, images = 0.0, 0
    with eval_mode(model):
        for cached in batches:
            batch = {k: v.to(device) for k, v in cached.items()}
            batch["img"] = batch["img"].float() / 255
            loss, _ = criterion(model(batch["img"]), batch)
            total += float(loss.sum())
            images += batch["img"].shape[0]
    return total / max(images, 1)
