"""Physical slimming: cut the masked channels out of every conv and BN, keeping stock Ultralytics classes.

The result computes the same function as the masked model (the removed channels were exactly zero) and is an
ordinary DetectionModel: only tensor shapes and a few width attributes change, no class is replaced.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..graph.analyze import ChannelGraph
from ..nn.anchor import fold_pruned_implicit_a

# width attributes that stock modules read in forward/fuse, refreshed from their convs after cutting
_WIDTH_FIXES = {
    "C2f": lambda m: setattr(m, "c", m.cv1.conv.out_channels // 2),
    "C3k2": lambda m: setattr(m, "c", m.cv1.conv.out_channels // 2),
    "C2PSA": lambda m: setattr(m, "c", m.cv1.conv.out_channels // 2),
    "RepConv": lambda m: (setattr(m, "c1", m.conv1.conv.in_channels), setattr(m, "c2", m.conv1.conv.out_channels)),
}
@torch.no_grad()
def slim(model: nn.Module, graph: ChannelGraph, masks: dict[str, np.ndarray]) -> nn.Module:
    """Return a slimmed deep copy of `model`; `model` itself is left untouched."""
    model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    keep = graph.keep_indices(masks)
    fold_pruned_implicit_a(model, keep)  # YOLOv7 IDetect: needs the uncut head convs, so before the cuts
    norms = {s.site.name: s.site.norm_name for s in graph.sites}
    for conv_name, (out_idx, in_idx) in keep.items():
        conv = modules[conv_name]
        _cut_conv(conv, torch.as_tensor(out_idx), torch.as_tensor(in_idx))
        if norms[conv_name]:
            _cut_bn(modules[norms[conv_name]], torch.as_tensor(out_idx))
    for m in model.modules():
        fix = _WIDTH_FIXES.get(type(m).__name__)
        if fix:
            fix(m)
    return model


def _cut_conv(conv: nn.Conv2d, out_idx: torch.Tensor, in_idx: torch.Tensor):
    if len(out_idx) == conv.out_channels and len(in_idx) == conv.in_channels:
        return
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    weight = conv.weight.data[out_idx]
    if depthwise:
        conv.groups = len(out_idx)
        conv.in_channels = len(out_idx)
    else:
        weight = weight[:, in_idx]
        conv.in_channels = len(in_idx)
    conv.weight = nn.Parameter(weight.contiguous(), requires_grad=conv.weight.requires_grad)
    conv.out_channels = len(out_idx)
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.data[out_idx].contiguous(), requires_grad=conv.bias.requires_grad)


def _cut_bn(bn: nn.BatchNorm2d, idx: torch.Tensor):
    if len(idx) == bn.num_features:
        return
    bn.weight = nn.Parameter(bn.weight.data[idx].contiguous(), requires_grad=bn.weight.requires_grad)
    bn.bias = nn.Parameter(bn.bias.data[idx].contiguous(), requires_grad=bn.bias.requires_grad)
    bn.running_mean = bn.running_mean[idx].contiguous()
    bn.running_var = bn.running_var[idx].contiguous()
    bn.num_features = len(idx)
