"""ASFP: Adaptive Scaling Filter Pruning (Ko, Kang, Kim, IEEE Access 12, 2024), reconstructed.

Paper: a single learning process whose "adaptive scaling method dynamically adjusts the size of the network to reflect
the changing redundancy in the pruned network". Only the abstract is public; our reconstruction (docs/methods.md):
at every pruning step, on the *current* pruned network,
1. score every channel (Taylor importance measured in training, masked channels included via their shadows); Taylor
   scores are in units of loss, so they compare across layers;
2. redundancy of group g: rho_g = share of its alive channels scoring below `kappa` x the median score of all alive
   channels of the network; proposed width w_g = alive_g * (1 - rho_g) + (its masked channels scoring above that
   median) -- layers full of unimportant channels shrink most, and layers can grow back;
3. one global scale sigma, found by bisection, maps the proposals onto the current FLOPs target:
   width_g = clip(round_to * round(sigma * w_g / round_to), floor_g, full_g);
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
    max_scale: float = setting(4.0, "ASFP: upper end of the bisection for the global width scale sigma")

    def check(self):
        if not self.kappa > 0:
            raise YoloPruneError(f"--kappa must be > 0, got {self.kappa}.")
        if not self.max_scale >= 1:
            raise YoloPruneError(f"--max-scale must be at least 1, got {self.max_scale}.")


@register_method("asfp")
class ASFP(TaylorScored):
    Options = ASFPOptions

    def prune_step(self, ctx) -> MaskSet:
        scores, masks, target_gflops = self.score(ctx), ctx.masks, ctx.target_gflops
        alive = np.concatenate([scores[k][m] for k, m in masks.masks.items()])
        median = float(np.median(alive)) if alive.size else 0.0
        proposal = {g.name: self._proposed_width(scores[g.name], masks.masks[g.name], median)
                    for g in self.graph.groups}  # fmt: skip
        lo, hi = 0.0, self.options.max_scale
        for _ in range(40):  # smallest sigma whose FLOPs still reach the target (then trimmed exactly below)
            mid = (lo + hi) / 2
            if self.budget.cost.total(_resize(scores, masks.masks, self._widths(proposal, mid))) >= target_gflops:
                hi = mid
            else:
                lo = mid
        start = _resize(scores, masks.masks, self._widths(proposal, hi))
        redundant = [self._redundant(scores[k], m, median) for k, m in masks.masks.items()]
        ctx.log(sigma=hi, redundant=float(np.mean(redundant)))  # the global scale and the mean redundancy rho_g
        return MaskSet(self.graph, self.budget.allocate(scores, target_gflops, start=start))

    def _redundant(self, score: np.ndarray, alive: np.ndarray, median: float) -> float:
        return float((score[alive] < self.options.kappa * median).mean()) if alive.any() else 0.0

    def _proposed_width(self, score: np.ndarray, alive: np.ndarray, median: float) -> float:
        return alive.sum() * (1 - self._redundant(score, alive, median)) + (score[~alive] > median).sum()

    def _widths(self, proposal: dict[str, float], sigma: float) -> dict[str, int]:
        r = self.budget.round_to
        widths = {}
        for g in self.graph.groups:
            w = r * round(sigma * proposal[g.name] / r)
            widths[g.name] = int(min(max(w, self.budget.floors[g.gid]), g.width))
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
