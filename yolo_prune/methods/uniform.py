"""Uniform: the same fraction of channels removed from every group (folded-L1 order within a group).

The baseline that per-layer allocation must beat (Torch-Pruning's default local ratio works this way). One fraction
for the whole network is found by bisection so that the FLOPs just reach the target; the shared budget then trims the
rounding remainder, so widths differ from exactly uniform by at most a few alignment chunks. One-shot
(`yolo-prune prune`) or in training (`yolo-prune train`): there each step continues from the current masks (masked
channels stay masked, the alive ones ranked by folded L1 of their current values), as gradual pruning does; a first
version re-selected every group from scratch and swapped up to 163 channels a step on the demo data.
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
        scores, alive = self.score(ctx), ctx.masks.masks
        order = {k: np.lexsort((-scores[k], ~alive[k])) for k in scores}  # alive channels first, then by score
        lo, hi = 0.0, 1.0  # fraction removed from every group
        for _ in range(30):
            mid = (lo + hi) / 2
            if self.budget.cost.total(self._keep(order, alive, mid)) >= ctx.target_gflops:
                lo = mid
            else:
                hi = mid
        ctx.log(uniform_fraction=lo)
        start = self._keep(order, alive, lo)
        return MaskSet(self.graph, self.budget.allocate(scores, ctx.target_gflops, start=start))

    def _keep(self, order, alive, fraction: float) -> dict[str, np.ndarray]:
        """The same fraction off every group (within its floor and alignment), never above its current width."""
        r, masks = self.budget.round_to, {}
        for g in self.graph.groups:
            width = int(min(max(r * round((1 - fraction) * g.width / r), self.budget.floors[g.gid]), g.width))
            keep = np.zeros(g.width, bool)
            keep[order[g.name][: min(width, int(alive[g.name].sum()))]] = True
            masks[g.name] = keep
        return masks
