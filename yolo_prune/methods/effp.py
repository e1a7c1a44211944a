"""EFFP: Efficient and Fast Filter Pruning (Ko, Kang, Kim, AICAS 2024), reconstructed.

Paper: "we make redundant filters zero to make the output feature map the same as a lightweight model" and "use the
pruning/regrowing method to gradually remove unimportant filters to avoid permanently pruning important filters".
Only the abstract is public; our reconstruction (docs/methods.md):
- zero masks act after BN (shared MaskSet), so the training net *is* the light model;
- every pruning step re-ranks all channels, masked ones included, by the folded-L1 norm of their dense shadow weights
  (masked BN scale/shift keep training in the trainer, DPF-style), and allocates the current FLOPs target globally;
- channels that the new ranking wants back are regrown, but only up to a regrowth budget that starts at
  `regrow` x (masked channels) and decays by a cosine to none at the end of the pruning phase; a regrowth beyond the
  budget is replaced by the best still-alive channel of the same group, so widths (and FLOPs) are unchanged.
"""

from __future__ import annotations

import math

import numpy as np

from ..masks.mask import MaskSet
from .base import PruningMethod, register_method
from .criteria import folded_l1


@register_method("effp")
class EFFP(PruningMethod):
    regrow = 0.3  # fraction of masked channels that may come back at the first pruning step

    def __init__(self, graph, budget):
        super().__init__(graph, budget)
        self.regrown_total = 0  # channels regrown so far in the run (reported, and checked by tests)

    def score(self, model, masks):
        return folded_l1(model, self.graph)

    def prune_step(self, model, masks: MaskSet, target_gflops: float, progress: float) -> MaskSet:
        scores = self.score(model, masks)
        wanted = self.budget.allocate(scores, target_gflops)
        budget = int(self.regrow * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * self._masked(masks))
        new = self._limit_regrowth(scores, masks.masks, wanted, budget)
        self.regrown_total += sum(int((new[k] & ~masks.masks[k]).sum()) for k in new)
        return MaskSet(self.graph, new)

    @staticmethod
    def _masked(masks: MaskSet) -> int:
        return sum(int((~m).sum()) for m in masks.masks.values())

    @staticmethod
    def _limit_regrowth(scores, old, wanted, budget):
        """Keep the `budget` best regrowths globally; swap the others for the best alive channel of their group."""
        regrowths = [(scores[k][i], k, i) for k in wanted for i in np.flatnonzero(wanted[k] & ~old[k])]
        regrowths.sort(key=lambda r: -r[0])
        new = {k: v.copy() for k, v in wanted.items()}
        for _, k, i in regrowths[budget:]:
            spare = np.flatnonzero(old[k] & ~new[k])  # alive before, dropped now: take the best one back instead
            if len(spare) == 0:
                continue
            new[k][i] = False
            new[k][spare[np.argmax(scores[k][spare])]] = True
        return new

    def state_dict(self):
        return {"regrown_total": self.regrown_total}

    def load_state_dict(self, state):
        self.regrown_total = int(state.get("regrown_total", 0))
