"""Where a group's channels are produced: the rows of every member conv and its BatchNorm that hold each channel."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .analyze import ChannelGraph

Rows = list[tuple[str, torch.Tensor, np.ndarray]]  # (qualified tensor name, tensor, rows[channel, occurrence])


def channel_rows(model: nn.Module, graph: ChannelGraph) -> dict[str, Rows]:
    """Per group: (name, tensor, rows) for every member conv's weight and bias and its BatchNorm's weight, bias,
    running mean and variance; rows[c] are the tensor rows of group channel c (C2f's cv1 holds each channel of its
    group twice, once per chunk half). Two channels with equal rows in all of these produce equal maps."""
    modules = dict(model.named_modules())
    found: dict[str, Rows] = {g.name: [] for g in graph.groups}
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
        rows = live[order].reshape(group.width, occurrences)
        conv = modules[s.site.name]
        tensors = [(f"{s.site.name}.{k}", getattr(conv, k)) for k in ("weight", "bias")]
        if s.site.norm_name:
            bn = modules[s.site.norm_name]
            stats = ("weight", "bias", "running_mean", "running_var")
            tensors += [(f"{s.site.norm_name}.{k}", getattr(bn, k)) for k in stats]
        found[group.name] += [(n, t, rows) for n, t in tensors if t is not None]
    return found
