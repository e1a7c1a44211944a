"""The method contract: a pruning method is a set of optional hooks on one context object (docs/design.md).

A method subclasses `PruningMethod`, registers itself with `@register_method("key")` and implements `score` (higher =
keep); everything else is optional, with no-op defaults in the style of Ultralytics' callback stubs. The trainer calls
each hook at one point (`PruneContext` carries model, EMA, optimizer, masks, schedule position, metrics, a loss
helper, graph and budget):

    setup                  once, before the optimizer and EMA exist (may add modules / parameters)
    param_groups           right after the optimizer is built: extra parameter groups (own lr / weight decay)
    before_optimizer_step  after AMP unscaling and gradient clipping, before optimizer.step (may edit gradients);
                           only for steps that really happen (AMP skips steps with inf gradients)
    after_optimizer_step   after the step and the EMA update
    prune_step             at each scheduled pruning step: new masks meeting ctx.target_gflops
    on_epoch_end           once per epoch, after validation (ctx.metrics): True (or final masks) ends pruning now
    finish                 per checkpoint, before slimming: may change the model, may return clusters to merge
    state_dict / load_state_dict   exact resume

Options: a method's settings are a dataclass, its class attribute `Options` (a `MethodOptions`); its fields become
flags and keywords (yolo_prune/options.py), are validated, saved with the run and restored on resume; the instance holds
`self.options`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from ..errors import YoloPruneError
from ..graph.analyze import ChannelGraph
from ..masks.budget import Budget
from ..masks.mask import MaskSet
from ..options import Options, flag_name
from .context import PruneContext

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
    """Registered keys: all (None), those `yolo-prune prune` runs (True), those `yolo-prune train` runs (False)."""
    usable = {None: lambda c: True, True: lambda c: c.one_shot, False: lambda c: c.in_training}[one_shot]
    return sorted(k for k, cls in _METHODS.items() if usable(cls))


@dataclass
class MethodOptions(Options):
    """Base of a method's options dataclass (no fields: a method without options)."""


def option_owners() -> dict[str, str]:
    """Option name -> the method it belongs to (names are unique across methods; tests/methods checks it)."""
    return {f.name: key for key, cls in _METHODS.items() for f in fields(cls.Options)}


def build_options(method: str, given: dict | None) -> MethodOptions:
    """The method's options from the given values (defaults for the rest), validated; options of another method
    are one clear error."""
    cls = get_method(method)
    own = {f.name for f in fields(cls.Options)}
    for name in given or {}:
        if name not in own:
            owner = option_owners().get(name)
            where = f"an option of method '{owner}', not of '{method}'" if owner else "not a pruning option"
            have = ", ".join(flag_name(n) for n in sorted(own)) or "none"
            raise YoloPruneError(f"{flag_name(name)} is {where} ({method}'s options: {have}).")
    return cls.Options(**(given or {})).validate()


class PruningMethod(ABC):
    """Base class: channel scores -> masks under the shared FLOPs budget, plus optional training hooks."""

    key: ClassVar[str] = ""
    one_shot: ClassVar[bool] = False  # usable by `yolo-prune prune` (prunes a trained model at once)
    in_training: ClassVar[bool] = True  # usable by `yolo-prune train` (prunes while training)
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    cache_batches: ClassVar[int] = 0  # recent training batches the trainer keeps for ctx.loss (0: ctx.loss off)
    # compensation (train/compensate.py) is on by default when training starts from weights and removes at least this
    # fraction (--flops or --latency); a method whose runs measured worse with it at small cuts raises it
    # (--compensate / --no-compensate still decide)
    compensate_from_cut: ClassVar[float] = 0.0
    # distillation from the starting model (train/distill.py) is on by default when a run from weights prunes; a
    # method whose runs measured worse with it opts out (--distill W still decides)
    distill_from_weights: ClassVar[bool] = True

    def __init__(self, graph: ChannelGraph, budget: Budget, options: MethodOptions | dict | None = None):
        self.graph, self.budget = graph, budget
        if not isinstance(options, MethodOptions):
            options = build_options(self.key, options) if self.key else self.Options(**(options or {})).validate()
        self.options = options

    @abstractmethod
    def score(self, ctx: PruneContext) -> dict[str, np.ndarray]:
        """Importance of every channel of every group (higher = keep), masked channels included."""

    one_shot_steps: int = 1  # `yolo-prune prune` steps towards the target (more, with compensation in between)

    def calibration(self) -> tuple[int, int] | None:
        """A one-shot method that measures on images: (how many images of --data, at which size), else None."""
        return None

    # -- hooks: all optional -------------------------------------------------------------------------------------------
    def setup(self, ctx: PruneContext) -> None:
        """Once, after the model exists, before the optimizer and the EMA are built."""

    def param_groups(self, ctx: PruneContext) -> list[dict]:
        """Extra optimizer parameter groups (`{"params": [...], "lr": ..., ...}`), added right after it is built."""
        return []

    def before_optimizer_step(self, ctx: PruneContext) -> None:
        """Gradients are unscaled and clipped, the step has not run: read or edit gradients here."""

    def after_optimizer_step(self, ctx: PruneContext) -> None:
        """After the optimizer step and the EMA update."""

    def prune_step(self, ctx: PruneContext) -> MaskSet:
        """New masks meeting `ctx.target_gflops` (`ctx.progress` runs 0 -> 1 over the pruning phase)."""
        return MaskSet(self.graph, self.budget.allocate(self.score(ctx), ctx.target_gflops))

    def on_epoch_end(self, ctx: PruneContext) -> bool | MaskSet:
        """With `ctx.metrics`: True ends pruning with the current masks, a MaskSet ends it with those masks."""
        return False

    def finish(self, ctx: PruneContext) -> dict[str, list[list[int]]] | None:
        """Per checkpoint, before slimming: may change `ctx.model`; may return channel clusters to merge per group
        (group name -> clusters of local channel indices, the first one kept; see slim/merge.py)."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class TaylorScored(PruningMethod):
    """A method scored by what masking a channel costs the training objective, measured during training.

    By default Taylor importance of the loss (criteria.Taylor, observed at every optimizer step until the
    architecture is final), folded L1 before the first step; with `--criterion damage`, head damage instead
    (methods/damage.py: the second-order rise of the distillation loss, measured at each pruning step on the latest
    batch). Either way masked channels are measured with their dense shadow values in place, so their scores say
    what regrowing them would gain.
    """

    def __init__(self, graph, budget, options=None):
        from .criteria import FoldedL1, Taylor

        super().__init__(graph, budget, options)
        self.taylor, self.folded_l1 = Taylor(graph), FoldedL1(graph)
        self.head_damage = None  # set up by `setup` under --criterion damage

    def setup(self, ctx):
        from .damage import HeadDamage

        if ctx.settings is not None and ctx.settings.criterion == "damage":
            self.head_damage = HeadDamage(self.graph)

    def before_optimizer_step(self, ctx):
        if not ctx.final and self.head_damage is None:
            self.taylor.observe(ctx.model)

    def score(self, ctx):
        if self.head_damage is not None and ctx.images is not None and ctx.step is not None:
            self.head_damage.observe(ctx.model, ctx.images, seed=ctx.step)
        if self.head_damage is not None and self.head_damage.observations:
            ctx.log(criterion="head damage")
            return self.head_damage.scores()
        ctx.log(criterion="taylor" if self.taylor.steps else "folded l1")
        return self.taylor.scores() if self.taylor.steps else self.folded_l1(ctx.model)

    def state_dict(self):
        state = {"taylor": self.taylor.state_dict()}
        if self.head_damage is not None:
            state["head_damage"] = self.head_damage.state_dict()
        return state

    def load_state_dict(self, state):
        if "taylor" in state:
            self.taylor.load_state_dict(state["taylor"])
        if self.head_damage is not None and "head_damage" in state:
            self.head_damage.load_state_dict(state["head_damage"])
