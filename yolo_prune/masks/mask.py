"""Soft masks that make pruned channels exactly zero while the model keeps its full shape.

A channel is masked by zeroing its BatchNorm scale and shift: BN then outputs exactly 0 in train and eval mode, and
the activation keeps it at 0 (the tracer only lets a channel be pruned when act(0) == 0). Zeroing the conv weights
alone would not do: BN's shift would make the channel a non-zero constant. No hooks or custom classes are attached,
so a masked model is still a plain Ultralytics model that pickles, deep-copies (EMA) and exports as usual.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..graph.analyze import ChannelGraph


class MaskSet:
    """Per-group keep-masks of one graph, resolved to per-BatchNorm channel masks."""

    def __init__(self, graph: ChannelGraph, masks: dict[str, np.ndarray] | None = None):
        self.graph = graph
        self.masks = {k: np.asarray(v, bool).copy() for k, v in (masks or graph.full_masks()).items()}
        alive = graph.alive_components(self.masks)
        self.norm_keep: dict[str, torch.Tensor] = {}  # BN name -> bool per output channel
        for s in graph.sites:
            if s.site.norm_name and not alive[s.out_comp].all():
                self.norm_keep[s.site.norm_name] = torch.from_numpy(alive[s.out_comp].copy())

    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        """Zero the BN scale/shift of masked channels in `model` (the model, its EMA copy or a loaded one)."""
        modules = dict(model.named_modules())
        for name, keep in self.norm_keep.items():
            bn = modules[name]
            dead = ~keep.to(bn.weight.device)
            bn.weight[dead] = 0
            bn.bias[dead] = 0
        return model

    def alive_count(self) -> dict[str, int]:
        return {k: int(v.sum()) for k, v in self.masks.items()}

    def gflops(self) -> float:
        return self.graph.gflops(self.masks)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v.copy()) for k, v in self.masks.items()}

    @classmethod
    def from_state_dict(cls, graph: ChannelGraph, state: dict) -> MaskSet:
        return cls(graph, {k: np.asarray(v.cpu().numpy() if torch.is_tensor(v) else v, bool) for k, v in state.items()})
