"""From channel scores and a global cost target to kept channels: the budget every method shares.

Greedy on cost-normalised importance: repeatedly remove, from the group where it hurts least per unit of cost saved,
the next chunk of its lowest-scoring channels, until the predicted cost meets the target. The cost is FLOPs by
default (`FlopsCost`) or any model with the same members (site, fixed, internal/external units, total, stairs),
e.g. latency from a measured table
(latency/cost.py). Chunks step down each group's *ladder* of allowed widths: for FLOPs the multiples of `round_to`
(a group narrower than a multiple of it first drops its remainder); a cost model may keep only some of those (the
widths where latency actually drops). No group goes below its floor. Per-layer rates are not set anywhere: they
emerge from the global ranking.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import YoloPruneError
from ..graph.analyze import ChannelGraph

ROUND_TO = 8  # kept widths are multiples of this by default (TensorRT FP16 kernels want multiples of 8)
MIN_KEEP = 0.25  # by default no group keeps less than this fraction of its width


class FlopsCost:
    """FLOPs as the budget's cost: MACs per site internally (the thop count), GFLOPs at the interface."""

    name, unit = "FLOPs", "GFLOPs"

    def __init__(self, graph: ChannelGraph):
        self.graph = graph
        self.fixed = graph.untraced_macs  # what the trace does not see, in the internal unit

    def site(self, i: int, cin: float, cout: float) -> float:
        s = self.graph.sites[i].site
        return s.hw * (cout * (1 if s.depthwise else cin) * s.kernel + (4 * cout if s.norm_name else 0))

    def internal(self, gflops: float) -> float:
        return gflops / 2 * 1e9

    def external(self, macs: float) -> float:
        return 2 * macs / 1e9

    def total(self, masks: dict[str, np.ndarray] | None = None) -> float:
        return self.graph.gflops(masks)

    def stairs(self, widths: list[int], group_cost) -> list[int]:
        """The widths (ascending) worth stopping at, given `group_cost(width)`: for FLOPs, which fall with every
        channel, all of them."""
        return widths


class Budget:
    """Precomputed coupling between groups and conv sites, for fast incremental cost while allocating."""

    def __init__(self, graph: ChannelGraph, round_to: int = ROUND_TO, min_keep: float = MIN_KEEP, cost=None):
        """`round_to` and `min_keep` as validated by PruneSettings (--round-to, --min-keep; these are its defaults);
        `cost`: the cost model (FLOPs when None)."""
        self.graph, self.round_to = graph, round_to
        self.cost = cost if cost is not None else FlopsCost(graph)
        # per group: the sites whose input or output channels it owns, with per-channel occurrence counts
        self.touch: list[list[tuple[int, np.ndarray, np.ndarray]]] = [[] for _ in graph.groups]
        self.site_groups: list[set[int]] = []
        for i, s in enumerate(graph.sites):
            comps = np.concatenate([s.out_comp, s.in_comp])
            groups = set(graph.comp_group[comps[comps >= 0]].tolist())
            for gid in groups:
                width = graph.groups[gid].width
                occ = [np.bincount(graph.comp_local[c[c >= 0][graph.comp_group[c[c >= 0]] == gid]], minlength=width)
                       for c in (s.out_comp, s.in_comp)]  # fmt: skip
                self.touch[gid].append((i, occ[0], occ[1]))
            self.site_groups.append(groups)
        self.ladders = [self._ladder(g.gid, self._floor(g.width, min_keep)) for g in graph.groups]
        self.floors = {g.gid: self.ladders[g.gid][-1] for g in graph.groups}

    def _floor(self, width: int, min_keep: float) -> int:
        floor = max(self.round_to, math.ceil(min_keep * width / self.round_to) * self.round_to)
        return min(floor, width)

    def _ladder(self, gid: int, floor: int) -> list[int]:
        """Widths a group may be cut to, widest (full) first, down to its floor: the grid of multiples of
        `round_to`, thinned by the cost model to the widths where the cost actually drops."""
        width = self.graph.groups[gid].width
        grid = sorted({width} | set(range(floor, width, self.round_to)))
        if len(grid) > 1:
            grid = self.cost.stairs(grid, lambda w: self.group_cost(gid, w))
        return sorted(grid, reverse=True)

    def group_cost(self, gid: int, kept: int) -> float:
        """Cost of the sites a group touches with `kept` of its channels (its first ones) and the rest full."""
        g = self.graph
        total = 0.0
        for i, occ_out, occ_in in self.touch[gid]:
            s = g.sites[i]
            total += self.cost.site(i, len(s.in_comp) - occ_in[kept:].sum(), len(s.out_comp) - occ_out[kept:].sum())
        return total

    def min_gflops(self) -> float:
        """The cost (FLOPs by default) with every group at its floor: the deepest cut these floors allow."""
        return self.min_total()

    def min_total(self) -> float:
        masks = {g.name: np.arange(g.width) < self.floors[g.gid] for g in self.graph.groups}
        return self.cost.total(masks)

    def allocate(self, scores: dict[str, np.ndarray], target: float, tolerance: float = 0.002,
                 start: dict[str, np.ndarray] | None = None):  # fmt: skip
        """Boolean keep-mask per group whose predicted cost lies in [target - tolerance*base, target].

        `target` is in the cost model's unit (GFLOPs, or ms for latency).

        Within a group the lowest scores go first. `start` (optional) is a narrower starting point: its removed
        channels stay removed and the greedy continues from there.
        """
        g, model = self.graph, self.cost
        base = model.total()
        start = start or g.full_masks()
        if target >= model.total(start):
            return {k: np.asarray(v, bool).copy() for k, v in start.items()}
        reachable = self.min_total()
        if target < reachable - 1e-9:
            raise YoloPruneError(
                f"A {model.name} cut of {1 - target / base:.3f} is unreachable with these floors (round-to "
                f"{self.round_to}, min-keep): the largest reachable cut is {1 - reachable / base:.3f}."
            )
        score = [np.asarray(scores[grp.name], np.float64) for grp in g.groups]
        alive = [np.asarray(start[grp.name], bool).copy() for grp in g.groups]
        order = [np.lexsort((sc, al)) for sc, al in zip(score, alive)]  # removed first, then by ascending score
        kept = np.array([int(a.sum()) for a in alive])
        comp_alive = g.alive_components(start)
        cin = np.array([comp_alive[s.in_comp].sum() for s in g.sites], np.float64)
        cout = np.array([comp_alive[s.out_comp].sum() for s in g.sites], np.float64)
        cost = np.array([model.site(i, cin[i], cout[i]) for i in range(len(g.sites))])
        macs = cost.sum() + model.fixed
        target, slack = model.internal(target), model.internal(tolerance * base)
        cache: dict[int, tuple[float, float, np.ndarray] | None] = {}
        while macs > target:
            for gid in range(len(g.groups)):
                if gid not in cache:
                    cache[gid] = self._candidate(gid, kept[gid], order[gid], score[gid], cin, cout, cost)
            cands = [(gid, c) for gid, c in cache.items() if c is not None]
            if not cands:
                break
            landing = [x for x in cands if macs - x[1][1] >= target - slack]
            gid, (_, saved, chunk) = (
                max(landing, key=lambda x: x[1][0]) if landing else min(cands, key=lambda x: x[1][1])
            )
            alive[gid][chunk] = False
            kept[gid] -= len(chunk)
            for i, occ_out, occ_in in self.touch[gid]:
                cout[i] -= occ_out[chunk].sum()
                cin[i] -= occ_in[chunk].sum()
                cost[i] = model.site(i, cin[i], cout[i])
                for other in self.site_groups[i]:
                    cache.pop(other, None)
            macs = cost.sum() + model.fixed
        return {grp.name: alive[grp.gid] for grp in g.groups}

    def _candidate(self, gid, kept, order, score, cin, cout, cost):
        """The next chunk of group `gid` to remove: (priority, cost saved, channel indices), or None at the floor."""
        below = [w for w in self.ladders[gid] if w < kept]
        if not below:
            return None
        removed = self.graph.groups[gid].width - kept
        chunk = order[removed : removed + kept - below[0]]
        saved = 0.0
        for i, occ_out, occ_in in self.touch[gid]:
            saved += cost[i] - self.cost.site(i, cin[i] - occ_in[chunk].sum(), cout[i] - occ_out[chunk].sum())
        return saved / max(score[chunk].sum(), 1e-12), saved, chunk

    # -- incremental FLOPs for methods that choose their own cuts (msvfp) ---------------------------------------------
    def counts(self, masks: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Alive input and output channels of every conv site under `masks`: the state `saved_gflops` reads."""
        alive = self.graph.alive_components(masks)
        cin = np.array([alive[s.in_comp].sum() for s in self.graph.sites], np.float64)
        cout = np.array([alive[s.out_comp].sum() for s in self.graph.sites], np.float64)
        return cin, cout

    def saved_gflops(self, gid: int, chunk: np.ndarray, cin: np.ndarray, cout: np.ndarray) -> float:
        """GFLOPs (the cost model's unit: ms with latency) saved by removing the alive local channels `chunk` of group
        `gid` from the state (cin, cout).

        Only the sites that group touches are recomputed, so sizing a cut in every group costs microseconds.
        """
        saved = 0.0
        for i, occ_out, occ_in in self.touch[gid]:
            after = self.cost.site(i, cin[i] - occ_in[chunk].sum(), cout[i] - occ_out[chunk].sum())
            saved += self.cost.site(i, cin[i], cout[i]) - after
        return self.cost.external(saved)
