"""When to prune and how much: warm-up -> pruning phase (target ramps to --flops) -> fixed masks -> slim at the end."""

from __future__ import annotations

import math

from .settings import PruneSettings

__all__ = ["PruneSettings", "Schedule"]  # PruneSettings lives in methods/settings.py (re-exported here)


class Schedule:
    """Pruning steps at fixed positions (in epochs, fractional) with a cubic ramp of the FLOPs cut."""

    def __init__(self, settings: PruneSettings, epochs: int):
        start, end = settings.warmup_frac * epochs, settings.prune_frac * epochs
        n = max(1, math.ceil(settings.steps_per_epoch * (end - start)))
        self.positions = [start + (k + 1) * (end - start) / n for k in range(n)]
        self.start, self.end = start, end
        self.flops = settings.cut  # of FLOPs, or of latency with --latency

    def due(self, position: float, done: int) -> int | None:
        """Index of the latest step due at `position` (epochs) that has not been done, else None."""
        k = sum(p <= position + 1e-9 for p in self.positions) - 1
        return k if k >= done else None

    def progress(self, k: int) -> float:
        return (k + 1) / len(self.positions)

    def phase(self, position: float) -> float:
        """Progress through the pruning phase at `position` (epochs), continuous: 0 at its start, 1 from its end on;
        equal to progress(k) at step k's position."""
        return min(max((position - self.start) / max(self.end - self.start, 1e-12), 0.0), 1.0)

    def cut(self, k: int) -> float:
        """Fraction (of FLOPs, or latency) removed after step k: the cubic ramp prunes fast while the net is redundant,
        then gently."""
        return self.flops * (1 - (1 - self.progress(k)) ** 3)
