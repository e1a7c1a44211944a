"""The extension point: a pruning method scores channels; the shared engine does the rest.

A method subclasses `PruningMethod`, implements `score` (higher = keep) and registers itself with
`@register_method("key")`. The budget (global FLOPs target, floors, alignment), masking, the training schedule and
physical slimming are shared. In-training methods may override `prune_step` (EFFP adds regrowth, ASFP rescales
widths) and `state_dict`/`load_state_dict` for exact resume.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
from torch import nn

from ..errors import YoloPruneError
from ..graph.analyze import ChannelGraph
from ..masks.budget import Budget
from ..masks.mask import MaskSet

_METHODS: dict[str, type[PruningMethod]] = {}


def register_method(key: str):
    def register(cls):
        cls.key = key
        _METHODS[key] = cls
        return cls

    return register


def get_method(key: str) -> type[PruningMethod]:
    if key not in _METHODS:
        raise YoloPruneError(f"Unknown pruning method '{key}'; choose one of {list_methods()}.")
    return _METHODS[key]


def list_methods(one_shot: bool | None = None) -> list[str]:
    return sorted(k for k, cls in _METHODS.items() if one_shot is None or cls.one_shot == one_shot)


class PruningMethod(ABC):
    """Base class: channel scores -> masks under the shared FLOPs budget."""

    key: ClassVar[str] = ""
    one_shot: ClassVar[bool] = False  # True: prunes a trained model at once; False: prunes during training

    def __init__(self, graph: ChannelGraph, budget: Budget):
        self.graph, self.budget = graph, budget
        # per-BN channel sensitivities measured by the trainer (Taylor, see criteria.taylor); None outside training
        self.sensitivity: dict[str, np.ndarray] | None = None

    def training_scores(self, model: nn.Module) -> dict[str, np.ndarray]:
        """Loss-aware Taylor scores when the trainer measured them, else the data-free folded L1."""
        from .criteria import folded_l1, taylor

        return taylor(self.graph, self.sensitivity) if self.sensitivity else folded_l1(model, self.graph)

    @abstractmethod
    def score(self, model: nn.Module, masks: MaskSet) -> dict[str, np.ndarray]:
        """Importance of every channel of every group (higher = keep), masked channels included."""

    def prune_step(self, model: nn.Module, masks: MaskSet, target_gflops: float, progress: float) -> MaskSet:
        """New masks meeting `target_gflops`; `progress` runs 0 -> 1 over the pruning phase."""
        return MaskSet(self.graph, self.budget.allocate(self.score(model, masks), target_gflops))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
