"""PruneContext: the one object every hook of a pruning method receives (see methods/base.py for the hooks).

The trainer's pruner owns one context and refreshes it before each call; a one-shot prune (`yolo-prune prune`) builds
one with `PruneContext.one_shot`. Fields that do not exist yet at a hook's point are None (no optimizer in `setup`,
no metrics before the first validation, no pruning step outside `prune_step`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import YoloPruneError
from ..graph.analyze import ChannelGraph
from ..masks.budget import Budget
from ..masks.mask import MaskSet


@dataclass(eq=False)
class PruneContext:
    model: nn.Module  # the training model, unwrapped (DDP / compile); at `finish`, the checkpoint's model
    graph: ChannelGraph
    budget: Budget
    masks: MaskSet  # the current masks
    settings: Any  # the run's PruneSettings (None for a one-shot prune built without them)
    base_gflops: float
    ema: Any = None  # Ultralytics' ModelEMA (its model: ema.ema), None before it exists
    optimizer: torch.optim.Optimizer | None = None
    position: float = 0.0  # training position in epochs (fractional)
    progress: float = 0.0  # 0 -> 1 across the pruning phase (the last step done, or the one being taken)
    phase: float = 0.0  # progress through the pruning phase at `position`, continuous (0 -> 1, and 1 after it)
    step: int | None = None  # index of the pruning step being taken (prune_step), else None
    target_gflops: float | None = None  # this step's target (prune_step) in the budget's unit: GFLOPs (ms: --latency)
    final: bool = False  # the masks are final (the schedule ran out or a method ended pruning)
    metrics: dict | None = None  # the latest validation metrics (Ultralytics' keys, e.g. "metrics/mAP50-95(B)")
    images: torch.Tensor | None = None  # the latest training images (preprocessed), for statistics
    loss_fn: Callable | None = field(default=None, repr=False)  # set by the trainer: loss(masks, batches) -> float
    # set by the trainer where there is validation data (rank 0): val_fn(model, images) -> Ultralytics' metrics
    val_fn: Callable | None = field(default=None, repr=False)
    run_dir: Path | None = None  # the run's folder (rank 0), for a method's own figures
    logged: dict = field(default_factory=dict)  # evidence for this step's prune_log.csv row

    @classmethod
    def one_shot(cls, model, graph, budget, target_gflops, masks=None, settings=None) -> PruneContext:
        """A context for pruning a model at once (no training: no optimizer, EMA, metrics or loss)."""
        return cls(model=model, graph=graph, budget=budget, masks=masks or MaskSet(graph),
                   settings=settings, base_gflops=graph.gflops(), progress=1.0, phase=1.0, step=0,
                   target_gflops=target_gflops)  # fmt: skip

    def loss(self, masks: MaskSet | None = None, batches: int | None = None) -> float:
        """Mean detection loss per image of the model under `masks` (default: the current ones), on the latest
        cached training batches (all, or the last `batches`): Ultralytics' criterion, eval-mode BatchNorm, no grad.
        The masks are applied temporarily; the model is restored exactly afterwards."""
        if self.loss_fn is None:
            raise YoloPruneError("ctx.loss needs cached training batches: set the method's `cache_batches` (> 0); "
                                 "a one-shot prune has no training data.")  # fmt: skip
        return self.loss_fn(masks, batches)

    def validate(self, model: nn.Module, images: int = 0) -> dict:
        """Ultralytics' validation metrics ("metrics/mAP50-95(B)", ...) of `model` on the first `images` validation
        images (0: all), now, with the validator's own loop (train/quick_val.py); `model` is only read."""
        if self.val_fn is None:
            raise YoloPruneError("ctx.validate needs the run's validation data (rank 0 of a training run); a one-shot "
                                 "prune has none.")  # fmt: skip
        return self.val_fn(model, images)

    def log(self, **values) -> None:
        """Method evidence for this step's row of prune_log.csv: one column per name (numbers or short text)."""
        self.logged.update(values)
