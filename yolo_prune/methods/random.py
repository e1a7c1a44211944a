"""Random: channels scored at random, then the shared global FLOPs budget (random choice and allocation).

The floor every criterion must clear. `--random-seed` picks the draw; the scores are the same at every step of a run,
so in training (`yolo-prune train --method random`) the masks only shrink along one random ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..options import setting
from .base import MethodOptions, PruningMethod, register_method


@dataclass
class RandomOptions(MethodOptions):
    random_seed: int = setting(0, "random: seed of the random channel scores (another seed, another draw)")


@register_method("random")
class Random(PruningMethod):
    one_shot = True
    Options = RandomOptions

    def score(self, ctx):
        rng = np.random.default_rng(self.options.random_seed)
        return {g.name: rng.random(g.width) for g in self.graph.groups}
