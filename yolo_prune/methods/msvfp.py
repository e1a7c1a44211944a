"""MSVFP: Magnitude and Similarity based Variable rate Filter Pruning, reconstructed.

Paper: D. Ghimire, S.-H. Kim, "Magnitude and Similarity Based Variable Rate Filter Pruning for Efficient Convolution
Neural Networks", Applied Sciences 13(1):316, MDPI, 2023. DOI 10.3390/app13010316.
Official code: ghimiredhikura/msvsp-filter-pruning (research/methods.md section 3). Our port (docs/methods.md):
- criterion: filter magnitude (L2 norm of the BN-folded filter) removes *weak* filters while the FLOPs cut is below
  half the target; past it, filter similarity (summed distance to the group's other alive filters, FPGM-like) removes
  *redundant* ones;
- loss-aware variable rate: a candidate cut per channel group (its lowest-scoring alive channels, in aligned chunks,
  sized to save about `msvfp_step` of the dense FLOPs) is evaluated by the detection loss on cached training batches
  with the cut masked; the cut with the cheapest loss increase per GFLOP saved is committed, and the search repeats
  until the step's FLOPs target. Per-group rates are never set: they emerge from which cuts the loss allows;
- iterative pruning with short retraining: the shared schedule's pruning steps, with training in between.
Cost on CPU: the paper evaluates every layer for every cut. Here a cut evaluates `msvfp_candidates` groups: half of
them the groups whose last measured loss increase was cheapest (measured again: training and earlier cuts moved
them), the rest groups not measured yet, in criterion order, so every group gets measured as the run goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import YoloPruneError
from ..masks.budget import Budget
from ..masks.mask import MaskSet
from ..options import setting
from .base import MethodOptions, PruningMethod, register_method
from .criteria import FoldedL2, Similarity

MAGNITUDE, SIMILARITY = "magnitude", "similarity"


def criterion_at(cut: float, target_cut: float) -> str:
    """The paper's switch: weak filters (magnitude) until half the FLOPs target is cut, redundant ones after."""
    return MAGNITUDE if cut < target_cut / 2 else SIMILARITY


@dataclass
class Cut:
    """A candidate: remove the alive local `channels` of one group from the current masks."""

    group: str
    gid: int
    channels: np.ndarray
    saved: float  # GFLOPs saved from the current masks
    cost: float  # criterion scores removed per GFLOP saved: the order a pure magnitude/similarity rule would use
    increase: float | None = None  # measured loss increase over the current masks

    def per_gflop(self) -> float:
        """Loss increase per GFLOP saved (negative: the cut lowers the loss on the cached batches)."""
        return self.increase / self.saved


def size_cut(budget: Budget, gid: int, keep: np.ndarray, score: np.ndarray, counts, want: float) -> Cut | None:
    """The lowest-scoring alive channels of group `gid`, in `round_to` chunks, until they save `want` GFLOPs.

    A group of unaligned width first drops its remainder (as the budget does); no cut goes below the group's floor,
    so a group near its floor offers what is left. None when the group is at its floor.
    """
    kept, step, floor = int(keep.sum()), budget.round_to, budget.floors[gid]
    first = kept % step or step
    if kept - first < floor:
        return None
    alive = np.flatnonzero(keep)
    order = alive[np.argsort(score[alive], kind="stable")]
    for n in range(first, kept - floor + 1, step):
        saved = budget.saved_gflops(gid, order[:n], *counts)
        if saved >= want:
            break
    if saved <= 0:
        return None
    chunk = order[:n]
    return Cut(budget.graph.groups[gid].name, gid, chunk, saved, float(score[chunk].sum()) / saved)


def with_cut(masks: dict[str, np.ndarray], cut: Cut) -> dict[str, np.ndarray]:
    new = dict(masks)
    new[cut.group] = masks[cut.group].copy()
    new[cut.group][cut.channels] = False
    return new


class LossAwareSearch:
    """Greedy loss-aware cuts until a FLOPs target: the per-group rates emerge from what the loss allows.

    Args:
        budget: the shared budget (floors, alignment, incremental FLOPs).
        step: GFLOPs a candidate cut aims to save, as a fraction of the dense model's.
        candidates: groups whose cut is evaluated per commit; 0 evaluates every group (the paper, costly).
        tolerance: the search may land this fraction of the dense FLOPs below the target (as the budget does).
    """

    def __init__(self, budget: Budget, step: float = 0.02, candidates: int = 6, tolerance: float = 0.002):
        self.budget, self.step, self.candidates, self.tolerance = budget, step, candidates, tolerance
        self.estimates: dict[str, float] = {}  # group -> its last measured loss increase per GFLOP saved

    def shortlist(self, cuts: list[Cut]) -> list[Cut]:
        """The cuts to evaluate: the cheapest measured so far (re-measured) and, half or more, unmeasured ones."""
        fresh = sorted((c for c in cuts if c.group not in self.estimates), key=lambda c: c.cost)
        if self.candidates <= 0 or len(cuts) <= self.candidates:
            return fresh + [c for c in cuts if c.group in self.estimates]
        measured = sorted((c for c in cuts if c.group in self.estimates), key=lambda c: self.estimates[c.group])
        k = min(len(measured), max(self.candidates // 2, self.candidates - len(fresh)))
        return measured[:k] + fresh[: self.candidates - k]

    def run(self, masks: dict[str, np.ndarray], target: float, scores_of, loss_of):
        """Commit the cheapest measured cut until the GFLOPs reach `target`: (new masks, one record per commit).

        `scores_of(masks, gflops)` -> (criterion name, scores per group, higher = keep), asked before every commit
        (similarity changes as channels go, and the criterion switches at half the target); `loss_of(masks)` -> the
        loss with those masks. When no cut lands within the tolerance of the target any more (chunks too coarse for
        the last remainder), the budget trims the rest by the criterion and the record says so.
        """
        graph, budget = self.budget.graph, self.budget
        dense = graph.gflops()
        current = {k: np.asarray(v, bool).copy() for k, v in masks.items()}
        gflops, base, records = graph.gflops(current), None, []
        while gflops > target:
            criterion, scores = scores_of(current, gflops)
            counts, want = budget.counts(current), min(self.step * dense, gflops - target)
            cuts = [size_cut(budget, g.gid, current[g.name], np.asarray(scores[g.name]), counts, want)
                    for g in graph.groups]  # fmt: skip
            cuts = [c for c in cuts if c is not None and gflops - c.saved >= target - self.tolerance * dense]
            if not cuts:
                trimmed = budget.allocate(scores, target, start=current)
                removed = {k: int((current[k] & ~trimmed[k]).sum()) for k in current}
                records.append({"group": "trim:" + "+".join(k for k, n in removed.items() if n), "criterion": criterion,
                                "removed": sum(removed.values()), "gflops": graph.gflops(trimmed), "candidates": {}})
                return trimmed, records
            if base is None:
                base = loss_of(current)
            pick = self.shortlist(cuts)
            for c in pick:
                c.increase = loss_of(with_cut(current, c)) - base
                self.estimates[c.group] = c.per_gflop()
            best = min(pick, key=lambda c: (c.per_gflop(), c.cost))  # equal loss: the criterion decides
            records.append({"group": best.group, "criterion": criterion, "removed": len(best.channels),
                            "gflops": gflops - best.saved, "before": base, "loss": base + best.increase,
                            "candidates": {c.group: c.increase for c in pick}})  # fmt: skip
            current, gflops, base = with_cut(current, best), gflops - best.saved, base + best.increase
            self.estimates.pop(best.group)  # its next cut is another one: measure it afresh
        return current, records


@dataclass
class MSVFPOptions(MethodOptions):
    msvfp_step: float = setting(0.02, "msvfp: GFLOPs a candidate cut aims to save, as a fraction of the dense model's "
                                      "(smaller: finer per-group rates, more loss evaluations)")
    msvfp_candidates: int = setting(6, "msvfp: channel groups whose cut the loss evaluates per commit (0: every "
                                       "group, as in the paper; costly)")
    msvfp_batches: int = setting(1, "msvfp: cached training batches the loss of a candidate cut is measured on")

    def check(self):
        if not 0 < self.msvfp_step <= 0.5:
            raise YoloPruneError(f"--msvfp-step must be a FLOPs fraction in (0, 0.5], got {self.msvfp_step}.")
        if self.msvfp_candidates < 0:
            raise YoloPruneError(f"--msvfp-candidates must be >= 0 (0 = every group), got {self.msvfp_candidates}.")
        if self.msvfp_batches < 1:
            raise YoloPruneError(f"--msvfp-batches must be at least 1, got {self.msvfp_batches}.")


@register_method("msvfp")
class MSVFP(PruningMethod):
    """Loss-aware variable-rate pruning with the magnitude -> similarity criterion switch (module docstring)."""

    Options = MSVFPOptions

    def __init__(self, graph, budget, options=None):
        super().__init__(graph, budget, options)
        o = self.options
        self.cache_batches = o.msvfp_batches  # the trainer keeps this many recent batches for ctx.loss
        self.search = LossAwareSearch(budget, o.msvfp_step, o.msvfp_candidates)
        self.magnitude, self.similarity = FoldedL2(graph), Similarity(graph, mode="pairwise")

    def score(self, ctx):
        return self.magnitude(ctx.model)

    def prune_step(self, ctx):
        start, evals = time.perf_counter(), 0

        def loss(masks):  # on the cached batches (the trainer keeps `cache_batches` of them)
            nonlocal evals
            evals += 1
            return ctx.loss(MaskSet(self.graph, masks))

        masks, records = self.search.run(ctx.masks.masks, ctx.target_gflops, StepCriterion(self, ctx), loss)
        ctx.log(**_evidence(records), msvfp_evals=evals, msvfp_seconds=time.perf_counter() - start)
        return MaskSet(self.graph, masks)

    def state_dict(self):
        return {"estimates": dict(self.search.estimates)}

    def load_state_dict(self, state):
        self.search.estimates = {k: float(v) for k, v in state.get("estimates", {}).items()}


class StepCriterion:
    """The criterion per commit: magnitude below half the FLOPs target, similarity among alive filters past it.

    Magnitude does not depend on the masks and the filter distances do not change within a step (no training in
    between): both are computed once per step; similarity sums the distances to the *alive* filters of the group.
    """

    def __init__(self, method: MSVFP, ctx):
        self.method, self.ctx = method, ctx
        self._magnitude = self._distances = None

    def __call__(self, masks, gflops):
        ctx = self.ctx
        criterion = criterion_at(1 - gflops / ctx.base_gflops, ctx.settings.flops)
        if criterion == MAGNITUDE:
            if self._magnitude is None:
                self._magnitude = self.method.magnitude(ctx.model)
            return criterion, self._magnitude
        if self._distances is None:
            self._distances = {k: d.numpy() for k, d in self.method.similarity.distances(ctx.model).items()}
        scores = {}
        for name, d in self._distances.items():
            alive = masks[name]
            s = d[:, alive].sum(1) * alive
            scores[name] = s / max(s[alive].mean(), 1e-12) if alive.any() else s
        return criterion, scores


def _evidence(records: list[dict]) -> dict:
    """The step's prune_log.csv columns: per commit the group cut (and channels), the criterion, the candidates'
    loss increases; the loss on the cached batches before and after."""
    measured = [r for r in records if r["candidates"]]
    out = {
        "msvfp_criterion": "/".join(dict.fromkeys(r["criterion"] for r in records)),
        "msvfp_groups": " ".join(f"{r['group']}-{r['removed']}" for r in records),
        "msvfp_candidates": "; ".join(",".join(f"{g}:{v:+.3g}" for g, v in r["candidates"].items()) for r in measured),
        "msvfp_commits": len(records),
    }
    if measured:
        out.update(msvfp_loss_before=measured[0]["before"], msvfp_loss=measured[-1]["loss"])
    return out
