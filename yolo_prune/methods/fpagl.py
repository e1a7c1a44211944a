"""FP-AGL: Filter Pruning With Adaptive Gradient Learning for Accelerating Deep Convolutional Neural Networks.

Nam Joon Kim and Hyun Kim, IEEE Transactions on Multimedia 25:5279-5290, 2023 (online 2022).
DOI: 10.1109/TMM.2022.3189496

Only the abstract is public: filters are removed only once the ones to prune have become equal (as in C-SGD, Ding et
al., CVPR 2019), by centripetal vectors reweighted with a Taylor estimate of their effect on the loss, and by
adaptive gradient learning (AGL), where part of each gradient keeps its own direction while the filters to prune
still converge to a single point. Our reconstruction (docs/methods.md, "FP-AGL"):
- plan (first pruning step): the shared budget allocates the run's final FLOPs target on Taylor scores; each group's
  kept channels head one cluster each and every other channel joins the head whose filter is nearest to its own (the
  rows of all the group's member convs and BN terms, each tensor scaled by its RMS);
- Taylor-weighted centripetal vectors: every member is pulled towards its cluster's centre c = sum_j pi_j w_j, with
  pi proportional to the Taylor importance, so important filters move least and the merged filter stays near them.
  The pull acts on the producing weights and BN statistics of the model and its EMA after each optimizer step, as a
  contraction scheduled on the progress of the pruning phase: the distance shrinks as (1 - progress)^centripetal
  and is 0 at its end, whatever the number of steps, the learning rate or the optimizer (Adam would normalise a
  pull written into the gradient);
- AGL: before each optimizer step every member's gradient becomes (1 - a) g_i + a sum_j pi_j g_j; the own part
  keeps learning, the shared part stops the optimizer from pulling the cluster apart; a rises from 0 to 1 over the
  first `agl_ramp` of the phase, after which a cluster moves as one;
- nothing is zeroed: every pruning step keeps all channels (and logs the distance); at the end, per checkpoint,
  `finish` makes each cluster exactly identical (the residual it removed is logged) and returns the clusters, which
  the merge engine (slim/merge.py) folds onto their heads exactly: the merged model meets the FLOPs target.
Evidence in prune_log.csv: cluster_distance (mean and max relative distance of members from their centres),
agl_mix, merged_gflops (what the merge will leave) and clustered (channels to be merged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from ultralytics.utils import LOGGER

from ..errors import YoloPruneError
from ..graph.rows import channel_rows
from ..masks.clusters import ClusterCentres, Clusters, filter_features, merged_masks
from ..options import setting
from .base import MethodOptions, TaylorScored, register_method


def plan_clusters(features: torch.Tensor, keep: np.ndarray) -> list[list[int]]:
    """Clusters of one group: each kept channel heads one, every other channel joins the head nearest to it
    (`features`: one row per channel). Only clusters with members are returned, head first."""
    heads, others = np.flatnonzero(keep), np.flatnonzero(~np.asarray(keep, bool))
    if not len(heads):
        raise YoloPruneError("FP-AGL: a group keeps no channel; raise --min-keep.")
    clusters = [[int(h)] for h in heads]
    if len(others):
        nearest = torch.cdist(features[others].double(), features[heads].double()).argmin(1)
        for channel, head in zip(others.tolist(), nearest.tolist()):
            clusters[head].append(channel)
    return [c for c in clusters if len(c) > 1]


def agl_mix(phase: float, ramp: float) -> float:
    """Share of each member's gradient replaced by its cluster's weighted mean gradient: 0 -> 1 over `ramp`."""
    return float(np.clip(phase / ramp, 0.0, 1.0))


def pull_strength(done: float, phase: float, power: float) -> float:
    """The contraction t that takes the members' distance from its value at progress `done` to its scheduled value
    at `phase`: distance ~ (1 - progress)^power, so t = 1 - ((1 - phase) / (1 - done))^power, and t = 1 from the
    end of the pruning phase on (identical members stay identical)."""
    if phase >= 1.0 or done >= 1.0:
        return 1.0
    return float(1.0 - ((1.0 - phase) / (1.0 - done)) ** power) if phase > done else 0.0


@dataclass
class FPAGLOptions(MethodOptions):
    centripetal: float = setting(2.0, "FP-AGL: strength of the centripetal pull; each filter's distance from its "
                                 "cluster centre shrinks as (1 - progress)^centripetal, to 0 at the end of the "
                                 "pruning phase")  # fmt: skip
    agl_ramp: float = setting(0.7, "FP-AGL: share of the pruning phase over which the adaptive gradient mix rises "
                              "from own gradients (0) to cluster-shared gradients (1)")  # fmt: skip

    def check(self):
        if not self.centripetal > 0:
            raise YoloPruneError(f"--centripetal must be a positive power, got {self.centripetal}.")
        if not 0 < self.agl_ramp <= 1:
            raise YoloPruneError(f"--agl-ramp must be a fraction within (0, 1], got {self.agl_ramp}.")


@register_method("fpagl")
class FPAGL(TaylorScored):
    Options = FPAGLOptions
    # it masks nothing while training (its clusters converge, then merge), so compensation has nothing to hand over:
    # runs with and without it ended identical (docs/results.md, session 13)
    compensate_from_cut = math.inf

    def __init__(self, graph, budget, options=None):
        super().__init__(graph, budget, options)
        self.clusters: Clusters = {}  # planned at the first pruning step, fixed afterwards
        self.weights: dict[str, np.ndarray] = {}  # Taylor importance per channel: the centre weights pi
        self.pulled_to = 0.0  # phase progress the centripetal pull has been applied up to
        self.centres: ClusterCentres | None = None

    def setup(self, ctx):
        """Taylor weights the centres whatever --criterion says: the paper's Taylor-weighted centripetal vectors."""

    # -- pruning steps: plan once, then follow the pull -------------------------------------------------------------
    def prune_step(self, ctx):
        scores = self.score(ctx)
        if not self.clusters:
            self._plan(ctx, scores)
        self.weights = {g: np.asarray(scores[g], np.float64) for g in self.clusters}
        self.centres = ClusterCentres(self.graph, self.clusters, self.weights)
        before = self.centres.distance(ctx.model)
        self._pull(ctx, ctx.progress)
        merged = merged_masks(self.graph, ctx.masks.masks, self.clusters)
        ctx.log(cluster_distance=_mean(before), cluster_distance_max=_max(before), agl_mix=self._mix(ctx.progress),
                merged_gflops=self.graph.gflops(merged), clustered=self.merged_channels)
        return ctx.masks  # nothing is zeroed: the clusters converge and are merged at the end

    @property
    def merged_channels(self) -> int:
        """Channels the merge folds into their cluster heads."""
        return sum(len(c) - 1 for cs in self.clusters.values() for c in cs)

    def _plan(self, ctx, scores):
        final = ctx.base_gflops * (1 - ctx.settings.flops)
        keep = self.budget.allocate(scores, final)
        rows = channel_rows(ctx.model, self.graph)
        self.clusters = {g: c for g in keep if (c := plan_clusters(filter_features(rows[g]), keep[g]))}
        self.pulled_to = ctx.progress

    # -- every optimizer step: AGL on the gradients, the centripetal pull on the weights ------------------------------
    def before_optimizer_step(self, ctx):
        super().before_optimizer_step(ctx)  # Taylor observes the gradients as the loss gives them
        if self.centres is not None:  # at the progress the pull has reached (saved with the state: exact resume)
            self.centres.pull(ctx.model, self._mix(self.pulled_to), grads=True)

    def after_optimizer_step(self, ctx):
        if self.centres is not None:
            self._pull(ctx, ctx.phase)

    def _mix(self, phase: float) -> float:
        return agl_mix(phase, self.options.agl_ramp)

    def _pull(self, ctx, phase: float):
        t = pull_strength(self.pulled_to, max(phase, self.pulled_to), self.options.centripetal)
        if t > 0:
            for model in [ctx.model] + ([ctx.ema.ema] if ctx.ema is not None else []):
                self.centres.pull(model, t)
        self.pulled_to = max(phase, self.pulled_to)

    # -- end: identical clusters, merged by the engine -----------------------------------------------------------------
    def finish(self, ctx):
        if not self.clusters:
            return None
        centres = ClusterCentres(self.graph, self.clusters, self.weights or None)
        residual = centres.distance(ctx.model)
        centres.pull(ctx.model, 1.0)
        ctx.log(final_residual=_max(residual))
        LOGGER.info(f"FP-AGL: merging {self.merged_channels} channels into their cluster heads; largest distance "
                    f"left before the final snap {_max(residual):.3g} (mean {_mean(residual):.3g})")  # fmt: skip
        return self.clusters

    def state_dict(self):
        return {**super().state_dict(), "clusters": self.clusters, "pulled_to": self.pulled_to,
                "weights": {k: v.copy() for k, v in self.weights.items()}}  # fmt: skip

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.clusters = {k: [list(map(int, c)) for c in v] for k, v in state.get("clusters", {}).items()}
        self.weights = {k: np.asarray(v, np.float64) for k, v in state.get("weights", {}).items()}
        self.pulled_to = float(state.get("pulled_to", 0.0))
        self.centres = ClusterCentres(self.graph, self.clusters, self.weights) if self.clusters else None


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else 0.0


def _max(x: np.ndarray) -> float:
    return float(x.max()) if len(x) else 0.0
