"""Merging: a cluster of identical channels of a group becomes one channel, exactly.

Identical filters (every member conv of the group, its bias, its BatchNorm's affine terms and running statistics)
make identical post-activation maps, x_r = x_k, so every consumer computes W_k x_k + W_r x_r = (W_k + W_r) x_k: the
cluster's input weights are summed onto the kept channel and the other members are masked, after which the ordinary
slim removes them (C-SGD's trimming, Ding et al., CVPR 2019). The consumer edit is compensation's W_K += W_R A
(train/compensate.py) with A an indicator; both go through `absorb_inputs`.

A channel that occurs several times in a consumer's input (SPPF's pooled copies, C2f's two chunk halves) pairs its
n-th occurrence with the kept channel's n-th: the same path applied to identical channels gives identical copies. An
IDetect ImplicitA adds its own constant to each input channel of its conv; the merged column then sees the kept
channel's constant, and the conv bias takes the difference.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import YoloPruneError
from ..graph.analyze import ChannelGraph
from ..masks.mask import MaskSet
from ..nn.anchor import implicit_a_feeds

TOLERANCE = 1e-6  # largest member-to-kept difference, relative to the tensor's largest magnitude, still "identical"

Clusters = dict[str, list[list[int]]]  # group name -> clusters of local channel indices, the first one kept


def channel_rows(model: nn.Module, graph: ChannelGraph) -> dict[str, list[tuple[str, torch.Tensor, np.ndarray]]]:
    """Where each group's channels are produced: per group, (name, tensor, rows) for every member conv's weight and
    bias and its BatchNorm's weight, bias, running mean and variance; rows[c] are the tensor rows of group channel c
    (C2f's cv1 holds each channel of its group twice, once per chunk half)."""
    modules = dict(model.named_modules())
    found: dict[str, list[tuple[str, torch.Tensor, np.ndarray]]] = {g.name: [] for g in graph.groups}
    seen = set()
    for s in graph.sites:
        live = np.flatnonzero(s.out_comp >= 0)
        if s.site.name in seen or not len(live):
            continue
        seen.add(s.site.name)
        group = graph.groups[int(graph.comp_group[s.out_comp[live[0]]])]
        local = graph.comp_local[s.out_comp[live]]
        order = np.argsort(local, kind="stable")
        occurrences = len(live) // group.width
        if not np.array_equal(local[order], np.repeat(np.arange(group.width), occurrences)):
            raise RuntimeError(f"{s.site.name} does not hold every channel of {group.name} equally often")
        rows = live[order].reshape(group.width, -1)
        conv = modules[s.site.name]
        tensors = [(f"{s.site.name}.{k}", getattr(conv, k)) for k in ("weight", "bias")]
        if s.site.norm_name:
            bn = modules[s.site.norm_name]
            stats = ("weight", "bias", "running_mean", "running_var")
            tensors += [(f"{s.site.norm_name}.{k}", getattr(bn, k)) for k in stats]
        found[group.name] += [(n, t, rows) for n, t in tensors if t is not None]
    return found


def mismatch(model: nn.Module, graph: ChannelGraph, clusters: Clusters) -> dict[str, tuple[float, str]]:
    """Per group: the largest difference of a cluster member from its kept channel, relative to the tensor's largest
    magnitude, and the tensor where it is (0.0 when every cluster is identical)."""
    rows = channel_rows(model, graph)
    worst = {}
    for group, group_clusters in clusters.items():
        worst[group] = (0.0, "")
        for name, t, r in rows[group]:
            scale = max(float(t.detach().abs().max()), 1e-12)
            for cluster in group_clusters:
                if len(cluster) > 1:
                    members = t.detach()[r[cluster[1:]]]
                    d = float((members - t.detach()[r[cluster[:1]]]).abs().max()) / scale
                    if d > worst[group][0]:
                        worst[group] = (d, name)
    return worst


@torch.no_grad()
def snap_clusters(model: nn.Module, graph: ChannelGraph, clusters: Clusters,
                  weights: dict[str, np.ndarray] | None = None) -> float:  # fmt: skip
    """Make every cluster identical: each member's producing rows (conv, bias, BN terms and statistics) become the
    cluster's centre, weighted by `weights[group]` per channel (uniform by default). Returns the largest relative
    deviation from the centre before the snap: what the snap changed."""
    rows = channel_rows(model, graph)
    widths = {g.name: g.width for g in graph.groups}
    largest = 0.0
    for group, group_clusters in clusters.items():
        w = np.ones(widths[group]) if weights is None else np.asarray(weights[group], np.float64)
        for _, t, r in rows[group]:
            scale = max(float(t.abs().max()), 1e-12)
            for cluster in (c for c in group_clusters if len(c) > 1):
                pi = w[cluster] / w[cluster].sum() if w[cluster].sum() > 0 else np.full(len(cluster), 1 / len(cluster))
                members = t[r[cluster]]  # (members, occurrences, ...)
                centre = torch.einsum("m,m...->...", torch.as_tensor(pi, device=t.device), members.double())
                largest = max(largest, float((members - centre.to(t.dtype)).abs().max()) / scale)
                t[r[cluster]] = centre.to(t.dtype).expand_as(members)
    return largest


@torch.no_grad()
def merge_clusters(model: nn.Module, graph: ChannelGraph, masks: MaskSet | dict[str, np.ndarray], clusters: Clusters,
                   tolerance: float = TOLERANCE) -> MaskSet:  # fmt: skip
    """Merge each cluster onto its first channel in `model` (in place) and return the masks with the other members
    masked, applied to `model`: ready for the normal slim. The model computes what it computed before.

    Refuses (YoloPruneError, model untouched) a cluster whose members are not identical within `tolerance`: merging
    it would change the model's output; `snap_clusters` makes clusters identical.
    """
    masks = masks.masks if isinstance(masks, MaskSet) else masks
    new = _checked(graph, masks, clusters)
    bad = {g: v for g, v in mismatch(model, graph, clusters).items() if v[0] > tolerance}
    if bad:
        group, (d, where) = max(bad.items(), key=lambda kv: kv[1][0])
        raise YoloPruneError(
            f"Cannot merge: the clusters of {len(bad)} group(s) are not identical (worst: {group}, {where} differs by "
            f"{d:.3g} of its scale, the tolerance is {tolerance:g}); merging would change the model's output. Make the "
            f"members identical first (snap_clusters)."
        )
    partner = np.full(graph.n_comp + 1, -1, np.int64)  # merged component -> the kept one; index -1 (fixed) reads -1
    for group, group_clusters in clusters.items():
        comps = _components(graph, group)
        for cluster in group_clusters:
            partner[comps[cluster[1:]]] = comps[cluster[0]]
    modules = dict(model.named_modules())
    shifts = {conv: modules[ia].implicit[0, :, 0, 0] for ia, conv in implicit_a_feeds(model).items()}
    done: dict[str, np.ndarray] = {}
    for s in graph.sites:
        if s.site.depthwise:  # reads each channel only into that channel's own (merged) output
            continue
        if s.site.name in done:
            if not np.array_equal(done[s.site.name], s.in_comp) and (partner[s.in_comp] >= 0).any():
                raise YoloPruneError(f"{s.site.name} is called on different channels; its inputs cannot be merged.")
            continue
        done[s.site.name] = s.in_comp
        removed, kept = _pairs(s.in_comp, partner)
        if len(removed):
            a = torch.zeros(len(removed), len(s.in_comp), dtype=torch.float64)
            a[torch.arange(len(removed)), torch.as_tensor(kept)] = 1
            shift = shifts.get(s.site.name)
            b = torch.zeros(len(removed), dtype=torch.float64) if shift is None else -shift[kept].double().cpu()
            absorb_inputs(model, s.site, removed.tolist(), a, b, sign=1.0)
    merged = MaskSet(graph, new)
    merged.apply(model)
    return merged


def _checked(graph: ChannelGraph, masks: dict[str, np.ndarray], clusters: Clusters) -> dict[str, np.ndarray]:
    """Validate the clusters against the graph and the masks; the masks with the merged members removed."""
    widths = {g.name: g.width for g in graph.groups}
    new = {k: np.asarray(v, bool).copy() for k, v in masks.items()}
    for group, group_clusters in clusters.items():
        if group not in widths:
            raise YoloPruneError(f"Cannot merge: the model has no channel group '{group}'.")
        flat = [c for cluster in group_clusters for c in cluster]
        if any(not 0 <= c < widths[group] for c in flat) or len(set(flat)) != len(flat):
            raise YoloPruneError(f"Cannot merge group {group}: its clusters must be disjoint channel indices within "
                                 f"0..{widths[group] - 1}.")  # fmt: skip
        keep = new.setdefault(group, np.ones(widths[group], bool))
        if flat and not keep[flat].all():
            raise YoloPruneError(f"Cannot merge group {group}: a cluster contains masked channels.")
        for cluster in group_clusters:
            keep[list(cluster[1:])] = False
    return new


def _components(graph: ChannelGraph, group: str) -> np.ndarray:
    """Global component id of each local channel of `group`."""
    gid = next(g.gid for g in graph.groups if g.name == group)
    comps = np.flatnonzero(graph.comp_group == gid)
    return comps[np.argsort(graph.comp_local[comps])]


def _pairs(in_comp: np.ndarray, partner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Input positions of merged channels and, for each, the position of the same occurrence of its kept channel."""
    removed = np.flatnonzero(partner[in_comp] >= 0)
    occurrences: dict[int, list[int]] = {}
    for p, c in enumerate(in_comp.tolist()):
        occurrences.setdefault(c, []).append(p)
    kept = []
    for p in removed.tolist():
        mine, theirs = occurrences[int(in_comp[p])], occurrences.get(int(partner[in_comp[p]]), [])
        if len(mine) != len(theirs):
            raise RuntimeError(f"input channel {p}: {len(mine)} occurrences, its kept channel {len(theirs)}")
        kept.append(theirs[mine.index(p)])
    return removed, np.asarray(kept, np.int64)


@torch.no_grad()
def absorb_inputs(model: nn.Module, site, removed: list[int], a: torch.Tensor, b: torch.Tensor, sign: float = 1.0):
    """A consumer takes over input channels that go away: x_removed = A x + b gives W += sign * W[:, removed] A, and
    the constant sign * W[:, removed] b goes into the conv's bias or (subtracted) its BN running mean."""
    modules = dict(model.named_modules())
    conv = modules[site.name]
    w_r = conv.weight[:, removed].double()  # (out, |R|, kh, kw)
    delta = torch.einsum("orhw,rc->ochw", w_r, a.to(w_r.device))
    conv.weight += (sign * delta).to(conv.weight.dtype)
    offset = sign * torch.einsum("orhw,r->o", w_r, b.to(w_r.device))
    if site.norm_name:
        modules[site.norm_name].running_mean -= offset.to(modules[site.norm_name].running_mean.dtype)
    elif conv.bias is not None:
        conv.bias += offset.to(conv.bias.dtype)
