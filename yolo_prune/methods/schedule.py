"""When to prune and how much: warm-up -> pruning phase (target ramps to --flops) -> fixed masks -> slim at the end."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import YoloPruneError


@dataclass
class PruneSettings:
    """Everything that defines a pruning run; validated once, saved in last.pt, passed to DDP children as JSON."""

    flops: float = 0.0  # fraction of FLOPs to remove; 0 = train without pruning
    method: str = "effp"
    imgsz: int = 640  # image size at which FLOPs are counted (the papers' and Ultralytics' convention)
    round_to: int = 8  # kept widths are multiples of this
    min_keep: float = 0.25  # floor: never keep less than this fraction of a group
    warmup_frac: float = 0.1  # share of the run trained dense before the first pruning step
    prune_frac: float = 0.6  # share of the run at which the FLOPs target is reached; fixed masks afterwards
    steps_per_epoch: int = 4  # pruning steps per epoch during the pruning phase
    # least-squares hand-over of masked channels to their consumers (train/compensate.py); None: on when training
    # starts from weights (learned channel correlations to use), off from scratch (where it measured worse)
    compensate: bool | None = None
    distill: float | None = None  # feature distillation weight (train/distill.py); None: 1 from weights, else 0

    def validate(self) -> PruneSettings:
        from .base import get_method

        if not 0 <= self.flops < 1:
            raise YoloPruneError(f"--flops must be a fraction in [0, 1) (e.g. 0.37), got {self.flops}.")
        if self.flops:
            get_method(self.method)
        if not 0 <= self.warmup_frac < self.prune_frac <= 1:
            raise YoloPruneError(
                f"Need 0 <= --warmup-frac < --prune-frac <= 1, got {self.warmup_frac} and {self.prune_frac}."
            )
        if self.steps_per_epoch < 1:
            raise YoloPruneError(f"--steps-per-epoch must be at least 1, got {self.steps_per_epoch}.")
        if self.distill is not None and not self.distill >= 0:
            raise YoloPruneError(f"--distill must be a weight >= 0 (0 switches distillation off), got {self.distill}.")
        if self.round_to < 1 or not 0 <= self.min_keep <= 1:
            raise YoloPruneError("--round-to must be >= 1 and --min-keep within [0, 1].")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


class Schedule:
    """Pruning steps at fixed positions (in epochs, fractional) with a cubic ramp of the FLOPs cut."""

    def __init__(self, settings: PruneSettings, epochs: int):
        start, end = settings.warmup_frac * epochs, settings.prune_frac * epochs
        n = max(1, math.ceil(settings.steps_per_epoch * (end - start)))
        self.positions = [start + (k + 1) * (end - start) / n for k in range(n)]
        self.flops = settings.flops

    def due(self, position: float, done: int) -> int | None:
        """Index of the latest step due at `position` (epochs) that has not been done, else None."""
        k = sum(p <= position + 1e-9 for p in self.positions) - 1
        return k if k >= done else None

    def progress(self, k: int) -> float:
        return (k + 1) / len(self.positions)

    def cut(self, k: int) -> float:
        """FLOPs fraction removed after step k: the cubic ramp prunes fast while the net is redundant, then gently."""
        return self.flops * (1 - (1 - self.progress(k)) ** 3)
