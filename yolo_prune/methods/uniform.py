"""Uniform: the same fraction of channels removed from every group (folded-L1 order within a group).

The baseline that per-layer allocation must beat (Torch-Pruning's default local ratio works this way). One fraction
for the whole network is found by bisection so that the FLOPs just reach the target; the shared budget then trims the
rounding remainder, so widths differ from exactly uniform by at most a few alignment chunks. One-shot
(`yolo-prune prune`) or in training (`yolo-prune train`: every scheduled step re-ranks on the dense shadow values).
"""

from __future__ import annotations

import numpy as np

from ..masks.mask import MaskSet
from .base import PruningMethod, register_method
from .criteria import FoldedL1


@register_method("uniform")
class Uniform(PruningMethod):
    one_shot = True

    def __init__(self, graph, budget, options=None):
        super().__init__(graph, budget, options)
        self.criterion = FoldedL1(graph)

    def score(self, ctx):
        return self.criterion(ctx.model)

    def prune_step(self, ctx) -> MaskSet:
        scores = self.score(ctx)
        lo, hi = 0.0, 1.0  # fraction removed from every group
        for _ in range(30):
            mid = (lo + hi) / 2
            if self.graph.gflops(self._keep(scores, mid)) >= ctx.target_gflops:
                lo = mid
            else:
                hi = mid
        ctx.log(uniform_fraction=lo)
        return MaskSet(self.graph, self.budget.allocate(scores, ctx.target_gflops, start=self._keep(scores, lo)))

    def _keep(self, scores, fraction: float) -> dict[str, np.ndarray]:
        r, masks = self.budget.round_to, {}
        for g in self.graph.groups:
            width = int(min(max(r * round((1 - fraction) * g.width / r), self.budget.floors[g.gid]), g.width))
            keep = np.zeros(g.width, bool)
            keep[np.argsort(-scores[g.name], kind="stable")[:width]] = True
            masks[g.name] = keep
        return masks
