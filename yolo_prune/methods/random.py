"""Random: channels scored at random, then the shared global FLOPs budget (random choice and allocation), one-shot.

The floor every criterion must clear. `seed` makes a run repeatable (set it before pruning for another draw).
"""

from __future__ import annotations

import numpy as np

from .base import PruningMethod, register_method


@register_method("random")
class Random(PruningMethod):
    one_shot = True
    seed = 0

    def score(self, model, masks):
        rng = np.random.default_rng(self.seed)
        return {g.name: rng.random(g.width) for g in self.graph.groups}
