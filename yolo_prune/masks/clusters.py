"""Clusters of channels, the merging counterpart of a keep-mask: per group, lists of local channel indices whose
first index is the channel that stays (slim/merge.py merges the others onto it).

`ClusterCentres` holds each channel's cluster and weight and mixes any per-channel quantity towards the weighted
centre of its cluster: x <- x + t (centre - x). With t = 1 on the producing tensors it makes the clusters identical
(what the merge needs); FP-AGL applies it to weights (the centripetal pull) and to gradients (adaptive gradients).
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

import numpy as np
import torch
from torch import nn

from ..errors import YoloPruneError
from ..graph.analyze import ChannelGraph
from ..graph.rows import channel_rows

Clusters = dict[str, list[list[int]]]  # group name -> clusters of local channel indices, the first one kept


def validate(graph: ChannelGraph, clusters: Clusters) -> None:
    """One clear error for clusters that do not fit the graph."""
    widths = {g.name: g.width for g in graph.groups}
    for group, group_clusters in clusters.items():
        if group not in widths:
            raise YoloPruneError(f"Cannot merge: the model has no channel group '{group}'.")
        flat = [c for cluster in group_clusters for c in cluster]
        if any(not 0 <= c < widths[group] for c in flat) or len(set(flat)) != len(flat):
            raise YoloPruneError(f"Cannot merge group {group}: its clusters must be disjoint channel indices within "
                                 f"0..{widths[group] - 1}.")  # fmt: skip


def merged_masks(graph: ChannelGraph, masks: dict[str, np.ndarray], clusters: Clusters) -> dict[str, np.ndarray]:
    """`masks` with every member but the first of each cluster removed; a cluster may not contain masked channels."""
    validate(graph, clusters)
    new = {k: np.asarray(v, bool).copy() for k, v in masks.items()}
    for group, group_clusters in clusters.items():
        keep = new.setdefault(group, np.ones(next(g.width for g in graph.groups if g.name == group), bool))
        flat = [c for cluster in group_clusters for c in cluster]
        if flat and not keep[flat].all():
            raise YoloPruneError(f"Cannot merge group {group}: a cluster contains masked channels.")
        for cluster in group_clusters:
            keep[list(cluster[1:])] = False
    return new


class ClusterCentres:
    """The clusters of some groups with a weight per channel (uniform by default; normalised within each cluster)."""

    def __init__(self, graph: ChannelGraph, clusters: Clusters, weights: dict[str, np.ndarray] | None = None):
        validate(graph, clusters)
        self.graph, self.clusters = graph, {k: [list(map(int, c)) for c in v] for k, v in clusters.items()}
        widths = {g.name: g.width for g in graph.groups}
        self.index: dict[str, torch.Tensor] = {}  # group -> cluster id per channel (singletons get their own)
        self.weight: dict[str, torch.Tensor] = {}  # group -> weight per channel, summing to 1 within its cluster
        self.count: dict[str, int] = {}  # group -> number of clusters (singletons included)
        for group, group_clusters in self.clusters.items():
            index = np.full(widths[group], -1, np.int64)
            for k, cluster in enumerate(group_clusters):
                index[cluster] = k
            alone = np.flatnonzero(index < 0)
            index[alone] = len(group_clusters) + np.arange(len(alone))
            w = np.ones(widths[group]) if weights is None else np.clip(np.asarray(weights[group], np.float64), 0, None)
            total = np.bincount(index, w)
            empty = total[index] <= 0  # a cluster without weight: uniform within it
            w = np.where(empty, 1.0, w)
            self.index[group] = torch.from_numpy(index)
            self.count[group] = int(index.max()) + 1
            self.weight[group] = torch.from_numpy(w / np.bincount(index, w)[index])
        self._rows: WeakKeyDictionary = WeakKeyDictionary()
        self._device: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def centre(self, group: str, x: torch.Tensor) -> torch.Tensor:
        """Per channel (dim 0 of `x`), the weighted centre of its cluster, in float64."""
        index, weight = self._on(group, x.device)
        flat = x.detach().double().reshape(len(index), -1)
        sums = torch.zeros(self.count[group], flat.shape[1], dtype=torch.float64, device=x.device)
        sums.index_add_(0, index, flat * weight[:, None])
        return sums[index].reshape(x.shape)

    def _on(self, group: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The group's cluster ids and weights on `device` (copied once: the pull runs at every optimizer step)."""
        key = (group, str(device))
        if key not in self._device:
            self._device[key] = (self.index[group].to(device), self.weight[group].to(device))
        return self._device[key]

    def mix(self, group: str, x: torch.Tensor, t: float) -> torch.Tensor:
        """x + t (centre - x): t = 0 leaves x, t = 1 gives every member its cluster's centre."""
        centre = self.centre(group, x)
        return (centre if t >= 1 else x.double() + t * (centre - x.double())).to(x.dtype)

    def rows(self, model: nn.Module):
        """The producing tensors of the clustered groups of `model` (cached per model)."""
        found = self._rows.get(model)
        if found is None:
            every = channel_rows(model, self.graph)
            found = self._rows[model] = {g: every[g] for g in self.clusters}
        return found

    @torch.no_grad()
    def pull(self, model: nn.Module, t: float, grads: bool = False) -> None:
        """Mix every producing tensor of the clustered groups (or its gradient) towards the centres by `t`."""
        if t <= 0:
            return
        for group, rows in self.rows(model).items():
            for _, tensor, r in rows:
                target = tensor.grad if grads else tensor
                if target is None:
                    continue
                target[r] = self.mix(group, target[r], t)

    @torch.no_grad()
    def deviation(self, model: nn.Module) -> dict[str, tuple[float, str]]:
        """Per group: the largest elementwise difference of a member from its cluster's centre, relative to the
        tensor's largest magnitude, and the tensor where it is (0.0 for identical clusters)."""
        worst = {}
        for group, rows in self.rows(model).items():
            worst[group] = (0.0, "")
            for name, tensor, r in rows:
                x = tensor[r]
                d = float((x.double() - self.centre(group, x)).abs().max()) / max(float(tensor.abs().max()), 1e-12)
                if d > worst[group][0]:
                    worst[group] = (d, name)
        return worst

    @torch.no_grad()
    def distance(self, model: nn.Module) -> np.ndarray:
        """Relative distance ||f_i - c_i|| / ||c_i|| of every clustered member's filter f_i (its rows in all producing
        parameters, each tensor scaled by its RMS) from its cluster's centre c_i; singletons excluded."""
        out = []
        for group, rows in self.rows(model).items():
            members = torch.bincount(self.index[group])[self.index[group]] > 1
            if not members.any():
                continue
            feats = filter_features(rows)
            centre = self.centre(group, feats)
            d = (feats - centre).norm(dim=1) / centre.norm(dim=1).clamp_min(1e-12)
            out.append(d[members].cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


def filter_features(rows) -> torch.Tensor:
    """One row per channel of a group: its rows in every producing parameter (conv weights and bias, BN weight and
    bias; the running statistics follow them), each tensor divided by its RMS so that all count alike; float64."""
    parts = []
    for _, tensor, r in rows:
        if isinstance(tensor, nn.Parameter):
            t = tensor.detach().double()
            parts.append(t[r].reshape(len(r), -1) / t.pow(2).mean().sqrt().clamp_min(1e-12))
    return torch.cat(parts, 1)
