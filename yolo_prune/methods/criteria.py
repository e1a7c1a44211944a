"""Channel importance criteria shared by the methods."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..graph.analyze import ChannelGraph


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


@torch.no_grad()
def folded_l1(model: nn.Module, graph: ChannelGraph, bn_scale: dict[str, torch.Tensor] | None = None):
    """L1 norm of each filter after folding its BatchNorm scale in: |gamma| / sqrt(var + eps) * ||W||_1.

    Plain conv-weight norms say little in front of a BN (which rescales them); the folded filter is what the
    deployed model computes with. `bn_scale` overrides gamma per BN name (dense shadow values of masked channels).
    """
    modules = dict(model.named_modules())
    per_conv = {}
    for s in graph.sites:
        site = s.site
        if not site.norm_name or site.name in per_conv:
            continue
        conv, bn = modules[site.name], modules[site.norm_name]
        gamma = (bn_scale or {}).get(site.norm_name, bn.weight)
        fold = gamma.abs() / torch.sqrt(bn.running_var + bn.eps)
        per_conv[site.name] = (conv.weight.abs().flatten(1).sum(1) * fold).double().cpu().numpy()
    return normalise(per_group(graph, per_conv))


def normalise(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Divide each group by its mean, so layers of different scale compare (the budget then divides by FLOPs)."""
    return {k: v / max(v.mean(), 1e-12) for k, v in scores.items()}


def taylor(graph: ChannelGraph, per_norm: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """First-order Taylor importance of post-BN channels, measured during training (see train/pruner.py).

    `per_norm` holds, per BN, the average over optimizer steps of (gamma * dL/dgamma + beta * dL/dbeta)^2, the
    squared loss change to first order if the channel were zeroed (Molchanov et al. 2019, BN variant). The score is
    its square root, |dL| in units of loss: the budget adds scores up over the channels it removes and weighs them
    against FLOPs, which only makes sense for a quantity that adds (squared changes do not: they make many moderately
    important channels look cheaper than a few, and the budget gutted whole layers). Unlike norms it compares across
    layers, so scores are divided by one global mean, not per group.
    """
    per_conv = {s.site.name: np.sqrt(per_norm[s.site.norm_name]) for s in graph.sites
                if s.site.norm_name in per_norm}  # fmt: skip
    scores = per_group(graph, per_conv)
    mean = np.concatenate(list(scores.values())).mean()
    return {k: v / max(mean, 1e-30) for k, v in scores.items()}
