"""From channel scores and a global FLOPs target to kept channels: the budget every method shares.

Greedy on FLOPs-normalised importance: repeatedly remove, from the group where it hurts least per FLOP saved, the
next chunk of its lowest-scoring channels, until the predicted FLOPs meet the target. Chunks keep widths aligned to
`round_to` (a group narrower than a multiple of it first drops its remainder), and no group goes below its floor.
Per-layer rates are not set anywhere: they emerge from the global ranking.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import YoloPruneError
from ..graph.analyze import ChannelGraph

ROUND_TO = 8  # kept widths are multiples of this by default (TensorRT FP16 kernels want multiples of 8)
MIN_KEEP = 0.25  # by default no group keeps less than this fraction of its width


class Budget:
    """Precomputed coupling between groups and conv sites, for fast incremental FLOPs while allocating."""

    def __init__(self, graph: ChannelGraph, round_to: int = ROUND_TO, min_keep: float = MIN_KEEP):
        """`round_to` and `min_keep` as validated by PruneSettings (--round-to, --min-keep; these are its defaults)."""
        self.graph, self.round_to = graph, round_to
        self.floors = {g.gid: self._floor(g.width, min_keep) for g in graph.groups}
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

    def _floor(self, width: int, min_keep: float) -> int:
        floor = max(self.round_to, math.ceil(min_keep * width / self.round_to) * self.round_to)
        return min(floor, width)

    def min_gflops(self) -> float:
        """FLOPs with every group at its floor: the deepest cut these floors allow."""
        masks = {g.name: np.arange(g.width) < self.floors[g.gid] for g in self.graph.groups}
        return self.graph.gflops(masks)

    def allocate(self, scores: dict[str, np.ndarray], target_gflops: float, tolerance: float = 0.002,
                 start: dict[str, np.ndarray] | None = None):  # fmt: skip
        """Boolean keep-mask per group whose predicted GFLOPs lie in [target - tolerance*base, target].

        Within a group the lowest scores go first. `start` (optional) is a narrower starting point: its removed
        channels stay removed and the greedy continues from there.
        """
        g = self.graph
        base = g.gflops()
        start = start or g.full_masks()
        if target_gflops >= g.gflops(start):
            return {k: np.asarray(v, bool).copy() for k, v in start.items()}
        reachable = self.min_gflops()
        if target_gflops < reachable - 1e-9:
            raise YoloPruneError(
                f"A FLOPs cut of {1 - target_gflops / base:.3f} is unreachable with these floors (round-to "
                f"{self.round_to}, min-keep): the largest reachable cut is {1 - reachable / base:.3f}."
            )
        score = [np.asarray(scores[grp.name], np.float64) for grp in g.groups]
        alive = [np.asarray(start[grp.name], bool).copy() for grp in g.groups]
        order = [np.lexsort((sc, al)) for sc, al in zip(score, alive)]  # removed first, then by ascending score
        kept = np.array([int(a.sum()) for a in alive])
        comp_alive = g.alive_components(start)
        cin = np.array([comp_alive[s.in_comp].sum() for s in g.sites], np.float64)
        cout = np.array([comp_alive[s.out_comp].sum() for s in g.sites], np.float64)
        cost = np.array([self._cost(i, cin[i], cout[i]) for i in range(len(g.sites))])
        macs = cost.sum() + g.untraced_macs
        target, slack = target_gflops / 2 * 1e9, tolerance * base / 2 * 1e9
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
                cost[i] = self._cost(i, cin[i], cout[i])
                for other in self.site_groups[i]:
                    cache.pop(other, None)
            macs = cost.sum() + g.untraced_macs
        return {grp.name: alive[grp.gid] for grp in g.groups}

    def _cost(self, i: int, cin: float, cout: float) -> float:
        s = self.graph.sites[i].site
        return s.hw * (cout * (1 if s.depthwise else cin) * s.kernel + (4 * cout if s.norm_name else 0))

    def _candidate(self, gid, kept, order, score, cin, cout, cost):
        """The next chunk of group `gid` to remove: (priority, MACs saved, channel indices), or None at the floor."""
        width = self.graph.groups[gid].width
        step = width % self.round_to if kept == width and width % self.round_to else self.round_to
        if kept - step < self.floors[gid]:
            return None
        removed = width - kept
        chunk = order[removed : removed + step]
        saved = 0.0
        for i, occ_out, occ_in in self.touch[gid]:
            saved += cost[i] - self._cost(i, cin[i] - occ_in[chunk].sum(), cout[i] - occ_out[chunk].sum())
        return saved / max(score[chunk].sum(), 1e-12), saved, chunk

    # -- incremental FLOPs for methods that choose their own cuts (msvfp) ---------------------------------------------
    def counts(self, masks: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Alive input and output channels of every conv site under `masks`: the state `saved_gflops` reads."""
        alive = self.graph.alive_components(masks)
        cin = np.array([alive[s.in_comp].sum() for s in self.graph.sites], np.float64)
        cout = np.array([alive[s.out_comp].sum() for s in self.graph.sites], np.float64)
        return cin, cout

    def saved_gflops(self, gid: int, chunk: np.ndarray, cin: np.ndarray, cout: np.ndarray) -> float:
        """GFLOPs saved by removing the alive local channels `chunk` of group `gid` from the state (cin, cout).

        Only the sites that group touches are recomputed, so sizing a cut in every group costs microseconds.
        """
        saved = 0.0
        for i, occ_out, occ_in in self.touch[gid]:
            after = self._cost(i, cin[i] - occ_in[chunk].sum(), cout[i] - occ_out[chunk].sum())
            saved += self._cost(i, cin[i], cout[i]) - after
        return 2 * saved / 1e9
