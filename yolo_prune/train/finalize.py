"""End of a pruning run: the method's `finish`, then the masked checkpoints become physically slim ones, in place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..checkpoint import STATE_ATTR, atomic_save
from ..graph.analyze import ChannelGraph
from ..safe_load import load
from ..slim.slim import slim


def slim_checkpoint(path: Path, graph: ChannelGraph | None, finish: Callable | None = None) -> None:
    """Replace the masked EMA model in an Ultralytics checkpoint by its slim equivalent (FP16, as Ultralytics saves).

    `finish(model, masks) -> masks` runs first, on the checkpoint's model (the method's `finish` hook: it may change
    the model and merge channels). With `graph` None (a dense run) only the stashed training state is dropped. The
    optimizer state belongs to the dense parameters and cannot survive slimming; a finished run does not resume.
    """
    ckpt = load(path)
    ema = ckpt.get("ema")
    state = getattr(ema, STATE_ATTR, None)
    if state is None:  # already slim (a re-run of final_eval) or not ours
        return
    delattr(ema, STATE_ATTR)
    if graph is None or "pruner" not in state:  # a dense run: only the distillation teacher was stashed
        _replace(ckpt, path)
        return
    masks = {k: v.numpy().astype(bool) for k, v in state["pruner"]["masks"].items()}
    model = ema.float()
    if finish is not None:
        masks = finish(model, masks)
    slim_model = slim(model, graph, masks).half()
    ckpt.update(ema=slim_model, model=None, optimizer=None, scaler=None)
    settings = state["pruner"]["settings"]
    ckpt["yolo_prune"] = {
        "method": settings["method"],
        "options": settings.get("options", {}),
        "settings": settings,
        "widths": {k: int(v.sum()) for k, v in masks.items()},
        "base_gflops": graph.gflops(),
        "slim_gflops": graph.gflops(masks),
    }
    _replace(ckpt, path)


def _replace(ckpt: dict, path: Path) -> None:
    atomic_save(ckpt, path)  # a kill mid-write leaves the masked checkpoint whole
