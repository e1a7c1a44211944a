"""Channel importance criteria, as objects a method opts into: FoldedL1, FoldedL2 (data-free), Taylor (measured in
training, stateful), Similarity (redundancy among a group's filters). Each gives scores per group, higher = keep."""

from __future__ import annotations

from weakref import WeakKeyDictionary

import numpy as np
import torch
from torch import nn

from ..graph.analyze import ChannelGraph

# Taylor terms are averaged over ~20 optimizer steps, across pruning steps: on a small dataset a step may come every
# batch or two, and a score from one or two batches is mostly noise.
TAYLOR_DECAY = 0.95


def per_group(graph: ChannelGraph, per_conv: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sum per-output-channel values of member convs into their group channels (coupled channels add up)."""
    out = {g.name: np.zeros(g.width) for g in graph.groups}
    for s in graph.sites:
        values = per_conv.get(s.site.name)
        live = s.out_comp >= 0
        if values is None or not live.any():
            continue
        comps = s.out_comp[live]
        gids, local = graph.comp_group[comps], graph.comp_local[comps]
        for gid in np.unique(gids):
            sel = gids == gid
            np.add.at(out[graph.groups[gid].name], local[sel], values[live][sel])
    return out


def normalise(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Divide each group by its mean, so layers of different scale compare (the budget then divides by FLOPs)."""
    return {k: v / max(v.mean(), 1e-12) for k, v in scores.items()}


def _filters_and_folds(model: nn.Module, graph: ChannelGraph, bn_scale=None):
    """(conv name, its filters flattened per output channel, the BatchNorm scale gamma / sqrt(var + eps)) per conv
    with a BN; `bn_scale` overrides gamma per BN name (dense shadow values of masked channels)."""
    modules = dict(model.named_modules())
    seen = set()
    for s in graph.sites:
        site = s.site
        if not site.norm_name or site.name in seen:
            continue
        seen.add(site.name)
        conv, bn = modules[site.name], modules[site.norm_name]
        gamma = (bn_scale or {}).get(site.norm_name, bn.weight)
        fold = gamma / torch.sqrt(bn.running_var + bn.eps)
        yield site.name, conv.weight.flatten(1), fold


class FoldedL1:
    """L1 norm of each filter after folding its BatchNorm scale in: |gamma| / sqrt(var + eps) * ||W||_1.

    Plain conv-weight norms say little in front of a BN (which rescales them); the folded filter is what the
    deployed model computes with. Normalised per group.
    """

    def __init__(self, graph: ChannelGraph):
        self.graph = graph

    @staticmethod
    def _norm(w: torch.Tensor) -> torch.Tensor:
        return w.abs().sum(1)

    @torch.no_grad()
    def __call__(self, model: nn.Module, bn_scale: dict[str, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
        per_conv = {name: (self._norm(w) * fold.abs()).double().cpu().numpy()
                    for name, w, fold in _filters_and_folds(model, self.graph, bn_scale)}  # fmt: skip
        return normalise(per_group(self.graph, per_conv))


class FoldedL2(FoldedL1):
    """As FoldedL1 with the L2 norm of the folded filter."""

    @staticmethod
    def _norm(w: torch.Tensor) -> torch.Tensor:
        return w.norm(dim=1)


def folded_l1(model: nn.Module, graph: ChannelGraph, bn_scale: dict[str, torch.Tensor] | None = None):
    """FoldedL1 as a function (`bn_scale` overrides gamma per BN name)."""
    return FoldedL1(graph)(model, bn_scale)


def taylor(graph: ChannelGraph, per_norm: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """First-order Taylor importance of post-BN channels from `per_norm`: per BN, the average over optimizer steps of
    (gamma * dL/dgamma + beta * dL/dbeta)^2, the squared loss change to first order if the channel were zeroed
    (Molchanov et al. 2019, BN variant).

    The score is its square root, |dL| in units of loss: the budget adds scores up over the channels it removes and
    weighs them against FLOPs, which only makes sense for a quantity that adds (squared changes do not: they make
    many moderately important channels look cheaper than a few, and the budget gutted whole layers). Unlike norms it
    compares across layers, so scores are divided by one global mean, not per group.
    """
    per_conv = {s.site.name: np.sqrt(per_norm[s.site.norm_name]) for s in graph.sites
                if s.site.norm_name in per_norm}  # fmt: skip
    return global_scores(graph, per_conv)


def global_scores(graph: ChannelGraph, per_conv: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-group scores divided by one global mean: for criteria in units of loss, which compare across layers."""
    scores = per_group(graph, per_conv)
    mean = np.concatenate(list(scores.values())).mean()
    return {k: v / max(mean, 1e-30) for k, v in scores.items()}


class Taylor:
    """Taylor importance measured in training: `observe` after each optimizer step's gradients are final (AMP
    unscaled), `scores` at a pruning step. A moving average (decay TAYLOR_DECAY) with bias correction while it fills.
    """

    def __init__(self, graph: ChannelGraph, decay: float = TAYLOR_DECAY):
        self.graph, self.decay = graph, decay
        self.norms = sorted({s.site.norm_name for s in graph.sites if s.site.norm_name})
        self.terms: dict[str, torch.Tensor] = {}  # per BN: moving average of (gamma*dL/dgamma + beta*dL/dbeta)^2
        self.steps = 0  # optimizer steps averaged in (for the bias correction)
        self._modules: WeakKeyDictionary = WeakKeyDictionary()

    @torch.no_grad()
    def observe(self, model: nn.Module) -> None:
        norms = self._modules.get(model)
        if norms is None:
            modules = dict(model.named_modules())
            norms = self._modules[model] = [(n, modules[n]) for n in self.norms]
        for name, bn in norms:
            if bn.weight.grad is None or bn.bias.grad is None:
                continue
            term = (bn.weight * bn.weight.grad + bn.bias * bn.bias.grad).float() ** 2
            previous = self.terms.get(name)
            previous = torch.zeros_like(term) if previous is None else previous.to(term.device)
            self.terms[name] = self.decay * previous + (1 - self.decay) * term
        self.steps += 1

    def average(self) -> dict[str, np.ndarray]:
        """Per BN, the bias-corrected average of the squared terms (unbiased while the average is still filling)."""
        correction = 1 - self.decay**self.steps
        return {n: (t / correction).double().cpu().numpy() for n, t in self.terms.items()}

    def scores(self) -> dict[str, np.ndarray]:
        return taylor(self.graph, self.average())

    def state_dict(self) -> dict:
        return {"terms": {k: v.detach().cpu().clone() for k, v in self.terms.items()}, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.terms = {k: torch.as_tensor(v).clone() for k, v in state["terms"].items()}
        self.steps = int(state["steps"])
        self._modules = WeakKeyDictionary()


class Similarity:
    """Redundancy among a group's filters (FPGM-style): a channel whose folded filter lies close to the others can be
    replaced by them, so it scores low.

    Per group, the distance between two channels is the Euclidean distance of their BN-folded filters, concatenated
    over the group's member convs. `mode="median"`: distance to the group's geometric median (Weiszfeld iterations);
    `mode="pairwise"`: the sum of distances to all other channels. Normalised per group.
    """

    def __init__(self, graph: ChannelGraph, mode: str = "median", iterations: int = 20):
        if mode not in ("median", "pairwise"):
            raise ValueError(f"Similarity mode must be 'median' or 'pairwise', got {mode!r}")
        self.graph, self.mode, self.iterations = graph, mode, iterations

    @torch.no_grad()
    def distances(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Per group, the (width x width) matrix of distances between its channels' folded filters."""
        squared = {g.name: torch.zeros(g.width, g.width, dtype=torch.float64) for g in self.graph.groups}
        filters = {name: w * fold[:, None] for name, w, fold in _filters_and_folds(model, self.graph)}
        for s in self.graph.sites:
            w = filters.pop(s.site.name, None)  # each conv once
            live = s.out_comp >= 0
            if w is None or not live.any():
                continue
            w = w.double().cpu()
            comps = s.out_comp[live]
            gids, local = self.graph.comp_group[comps], self.graph.comp_local[comps]
            rows = np.flatnonzero(live)
            for gid in np.unique(gids):
                sel = gids == gid
                f = w[torch.from_numpy(rows[sel])]
                idx = torch.from_numpy(local[sel])
                squared[self.graph.groups[gid].name][idx[:, None], idx[None, :]] += torch.cdist(f, f) ** 2
        return {k: v.clamp_min(0).sqrt() for k, v in squared.items()}

    def __call__(self, model: nn.Module) -> dict[str, np.ndarray]:
        out = {}
        for name, d in self.distances(model).items():
            out[name] = (d.sum(1) if self.mode == "pairwise" else _to_median(d, self.iterations)).numpy()
        return normalise(out)


def _to_median(d: torch.Tensor, iterations: int) -> torch.Tensor:
    """Distance of each point to the geometric median of the points, from their distance matrix only.

    The median is kept as convex weights over the points (Weiszfeld: weights ~ 1 / distance to the median); squared
    distances to a convex combination follow from the distance matrix: |x_i - sum_j a_j x_j|^2 =
    sum_j a_j d_ij^2 - 1/2 sum_jk a_j a_k d_jk^2.
    """
    n = d.shape[0]
    sq = d**2
    a = torch.full((n,), 1.0 / n, dtype=d.dtype)
    for _ in range(iterations):
        dist = (sq @ a - 0.5 * a @ sq @ a).clamp_min(0).sqrt()
        a = 1 / dist.clamp_min(1e-12)
        a = a / a.sum()
    return (sq @ a - 0.5 * a @ sq @ a).clamp_min(0).sqrt()
