"""Write slim models in the Ultralytics checkpoint layout, atomically."""

from __future__ import annotations

import copy
import os
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from .errors import YoloPruneError


def check_output_path(out) -> Path:
    """Validate an output checkpoint path before any work is done (so a bad path fails fast, with nothing written)."""
    path = Path(out)
    if path.suffix != ".pt":
        raise YoloPruneError(f"Output '{out}' must be a .pt file (an Ultralytics checkpoint).")
    if path.is_dir():
        raise YoloPruneError(f"Output '{out}' is a directory; give a file name ending in .pt.")
    return path


def save_checkpoint(model: nn.Module, out, manifest: dict, train_args: dict | None = None, half: bool = False,
                    key: str = "yolo_prune") -> Path:  # fmt: skip
    """Save `model` so that `YOLO(out)`, `yolo predict/val/export` and further training load it as is.

    Pruned models are stored in float32 by default (Ultralytics stores FP16; pruned BN statistics are worth the exact
    copy); `half=True` for models that were FP16 already. `manifest` goes under the extra key `key`.
    """
    from ultralytics import __version__

    path = check_output_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).eval()
    model = model.half() if half else model.float()
    for p in model.parameters():
        p.requires_grad_(False)
    ckpt = {
        "date": datetime.now().astimezone().isoformat(),
        "version": __version__,
        "license": "AGPL-3.0 (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "epoch": -1,
        "best_fitness": None,
        "model": model,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": train_args or {},
        "train_metrics": None,
        "train_results": None,
        key: manifest,
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
