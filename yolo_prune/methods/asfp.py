"""ASFP: Adaptive Scaling Filter Pruning (Ko, Kang, Kim, IEEE Access 12, 2024), reconstructed.

Paper: a single learning process whose "adaptive scaling method dynamically adjusts the size of the network to reflect
the changing redundancy in the pruned network". Only the abstract is public; our reconstruction (docs/methods.md):
at every pruning step, on the *current* pruned network,
1. score every channel (Taylor importance measured in training, masked channels included via their shadows); Taylor
   scores are in units of loss, so they compare across layers;
2. redundancy of group g: its alive channels scoring below `kappa` x the median score of all alive channels of the
   network (r_g of them, rho_g = r_g / alive_g), and its masked channels scoring above that median (b_g, which grow
   back) -- layers full of unimportant channels shrink most, and layers can grow back;
3. one global scale sigma, found by bisection (the largest whose FLOPs still reach the step's target), removes the
   same share of every group's redundant channels: width_g = clip(round_to * round((alive_g - sigma * r_g + b_g) /
   round_to), floor_g, full_g). Scaling the removal rather than the proposed width alive_g * (1 - rho_g) keeps each
   step as small as its target: a scaled width cannot reach the target when a group's channels are all redundant
   (its width sits at the floor for any sigma), so the first step overshot (480 channels masked, 392 regrown the next);
4. each group moves from its current channels to width_g with the fewest changes: a shrinking group masks its
   weakest alive channels, a growing one regrows its strongest masked ones (re-selecting every group from scratch
   would swap channels at equal width and throw away what they learned); the shared budget trims the last rounding
   remainder exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import YoloPruneError
from ..masks.mask import MaskSet
from ..options import setting
from .base import MethodOptions, TaylorScored, register_method


@dataclass
class ASFPOptions(MethodOptions):
    kappa: float = setting(0.5, "ASFP: an alive channel is redundant when it scores below kappa x the median score "
                           "of the network's alive channels")  # fmt: skip

    def check(self):
        if not self.kappa > 0:
            raise YoloPruneError(f"--kappa must be > 0, got {self.kappa}.")


@register_method("asfp")
class ASFP(TaylorScored):
    Options = ASFPOptions
    # from weights ASFP measured better without distillation: 0.134 vs 0.118 at -20 % (higher in four of four seeds),
    # 0.051 vs 0.025 at -37 % (four of four); docs/results.md, session 14
    distill_from_weights = False

    def prune_step(self, ctx) -> MaskSet:
        scores, masks, target_gflops = self.score(ctx), ctx.masks, ctx.target_gflops
        alive = np.concatenate([scores[k][m] for k, m in masks.masks.items()])
        median = float(np.median(alive)) if alive.size else 0.0
        plans = {k: self._redundancy(scores[k], m, median) for k, m in masks.masks.items()}
        lo, hi = 0.0, max((alive / r for alive, r, _ in plans.values() if r), default=1.0)  # hi: all at their floors
        for _ in range(40):  # the largest sigma whose FLOPs still reach the target (then trimmed exactly below)
            mid = (lo + hi) / 2
            if self.budget.cost.total(_resize(scores, masks.masks, self._widths(plans, mid))) >= target_gflops:
                lo = mid
            else:
                hi = mid
        start = _resize(scores, masks.masks, self._widths(plans, lo))
        redundant = [r / alive if alive else 0.0 for alive, r, _ in plans.values()]
        ctx.log(sigma=lo, redundant=float(np.mean(redundant)))  # the global scale and the mean redundancy rho_g
        return MaskSet(self.graph, self.budget.allocate(scores, target_gflops, start=start))

    def _redundancy(self, score: np.ndarray, alive: np.ndarray, median: float) -> tuple[int, int, int]:
        """(alive channels, redundant ones among them, masked channels scoring above the median) of one group."""
        redundant = int((score[alive] < self.options.kappa * median).sum())
        return int(alive.sum()), redundant, int((score[~alive] > median).sum())

    def _widths(self, plans: dict[str, tuple[int, int, int]], sigma: float) -> dict[str, int]:
        r = self.budget.round_to
        widths = {}
        for g in self.graph.groups:
            alive, redundant, back = plans[g.name]
            w = alive - min(sigma * redundant, alive) + back
            w = g.width if w >= g.width else r * round(w / r)
            widths[g.name] = int(max(w, self.budget.floors[g.gid]))
        return widths


def _resize(scores, current, widths) -> dict[str, np.ndarray]:
    """Each group at its new width with the fewest changes: drop the weakest alive or regrow the strongest masked."""
    masks = {}
    for k, w in widths.items():
        keep = current[k].copy()
        have = int(keep.sum())
        if w < have:
            alive = np.flatnonzero(keep)
            keep[alive[np.argsort(scores[k][alive], kind="stable")[: have - w]]] = False
        elif w > have:
            dead = np.flatnonzero(~keep)
            keep[dead[np.argsort(-scores[k][dead], kind="stable")[: w - have]]] = True
        masks[k] = keep
    return masks
