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
from ..masks.clusters import ClusterCentres, Clusters, merged_masks
from ..masks.mask import MaskSet
from ..nn.anchor import implicit_a_feeds

TOLERANCE = 1e-6  # largest member-to-centre difference, relative to the tensor's largest magnitude, still "identical"


@torch.no_grad()
def merge_clusters(model: nn.Module, graph: ChannelGraph, masks: MaskSet | dict[str, np.ndarray], clusters: Clusters,
                   tolerance: float = TOLERANCE) -> MaskSet:  # fmt: skip
    """Merge each cluster onto its first channel in `model` (in place) and return the masks with the other members
    masked, applied to `model`: ready for the normal slim. The model computes what it computed before.

    Refuses (YoloPruneError, model untouched) a cluster whose members are not identical within `tolerance`: merging
    it would change the model's output; `ClusterCentres(graph, clusters).pull(model, 1.0)` makes them identical.
    """
    new = merged_masks(graph, masks.masks if isinstance(masks, MaskSet) else masks, clusters)
    _check_identical(model, graph, clusters, tolerance)
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


def _check_identical(model: nn.Module, graph: ChannelGraph, clusters: Clusters, tolerance: float) -> None:
    bad = {g: v for g, v in ClusterCentres(graph, clusters).deviation(model).items() if v[0] > tolerance}
    if bad:
        group, (d, where) = max(bad.items(), key=lambda kv: kv[1][0])
        raise YoloPruneError(
            f"Cannot merge: the clusters of {len(bad)} group(s) are not identical (worst: {group}, {where} differs by "
            f"{d:.3g} of its scale, the tolerance is {tolerance:g}); merging would change the model's output. Make "
            f"the members identical first (ClusterCentres(graph, clusters).pull(model, 1.0))."
        )


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
