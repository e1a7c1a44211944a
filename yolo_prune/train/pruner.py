"""Pruning during training: keeps the masks exact across optimizer steps, EMA and resume.

Masked channels have zero BN scale/shift in the model (see masks/mask.py), so the network trains *as* the light model.
Their dense values live on as shadow copies that keep training (DPF-style): right before each optimizer step the
shadows are put back into the masked rows, so the step updates them with the gradient the masked channel receives;
right after, the new values are saved and the rows zeroed again. A regrown channel thus returns with trained values
instead of stale ones. Optimizer moments of masked rows are zeroed, and the EMA copy is masked after its update.
"""

from __future__ import annotations

from contextlib import contextmanager
from weakref import WeakKeyDictionary

import numpy as np
import torch
from torch import nn

from ..graph.analyze import analyze
from ..masks.budget import Budget
from ..masks.mask import MaskSet
from ..methods import get_method
from ..methods.schedule import PruneSettings, Schedule
from .compensate import Compensation


# Taylor terms are averaged over ~20 optimizer steps, across pruning steps: on a small dataset a step may come every
# batch or two, and a score from one or two batches is mostly noise.
TAYLOR_DECAY = 0.95


class InTrainingPruner:
    def __init__(self, model: nn.Module, settings: PruneSettings, epochs: int):
        self.settings = settings
        self.graph = analyze(model, settings.imgsz)
        self.budget = Budget(self.graph, settings.round_to, settings.min_keep)
        self.method = get_method(settings.method)(self.graph, self.budget)
        self.schedule = Schedule(settings, epochs)
        self.base_gflops = self.graph.gflops()
        self.masks = MaskSet(self.graph)
        self.steps_done = 0
        self.norms = sorted({s.site.norm_name for s in self.graph.sites if s.site.norm_name})
        self.shadow = self._read_bn(model)
        self._rows_cache: WeakKeyDictionary = WeakKeyDictionary()
        self._norms_cache: WeakKeyDictionary = WeakKeyDictionary()
        self.taylor: dict[str, torch.Tensor] = {}  # per BN: moving average of (gamma*dL/dgamma + beta*dL/dbeta)^2
        self.taylor_steps = 0  # optimizer steps averaged into `taylor` (for the bias correction)
        self.compensation = Compensation(self.graph) if settings.compensate else None
        self.images: torch.Tensor | None = None  # the latest training images (set by the trainer), for compensation

    @property
    def final(self) -> bool:
        """True once the last pruning step ran: the architecture is fixed from here on."""
        return self.steps_done >= len(self.schedule.positions)

    def _rows(self, model: nn.Module) -> list[tuple[str, nn.BatchNorm2d, torch.Tensor]]:
        """(name, BN, dead rows) of every BN with masked channels in `model`; cached until the masks change."""
        rows = self._rows_cache.get(model)
        if rows is None:
            modules = dict(model.named_modules())
            rows = [(n, modules[n], ~keep.to(modules[n].weight.device)) for n, keep in self.masks.norm_keep.items()]
            for n, bn, _ in rows:
                self.shadow[n] = tuple(t.to(bn.weight.device) for t in self.shadow[n])
            self._rows_cache[model] = rows
        return rows

    # -- around every optimizer step ----------------------------------------------------------------------------------
    @torch.no_grad()
    def before_optimizer_step(self, model: nn.Module):
        """Put the dense shadow values back into masked rows, so the optimizer step trains them too."""
        for name, bn, dead in self._rows(model):
            bn.weight[dead] = self.shadow[name][0][dead].to(bn.weight.dtype)
            bn.bias[dead] = self.shadow[name][1][dead].to(bn.bias.dtype)

    @torch.no_grad()
    def observe_gradients(self, model: nn.Module):
        """Add this step's Taylor terms; call after AMP unscaling and with the shadow values in (masked rows too)."""
        if self.final:
            return
        norms = self._norms_cache.get(model)
        if norms is None:
            modules = dict(model.named_modules())
            norms = self._norms_cache[model] = [(n, modules[n]) for n in self.norms]
        for name, bn in norms:
            if bn.weight.grad is None or bn.bias.grad is None:
                continue
            term = (bn.weight * bn.weight.grad + bn.bias * bn.bias.grad).float() ** 2
            previous = self.taylor.get(name, torch.zeros_like(term))
            self.taylor[name] = TAYLOR_DECAY * previous + (1 - TAYLOR_DECAY) * term
        self.taylor_steps += 1

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, ema=None):
        """Save the trained shadow rows, zero them again, zero their optimizer moments, mask the EMA."""
        for name, bn, dead in self._rows(model):
            for param, shadow in zip((bn.weight, bn.bias), self.shadow[name]):
                shadow[dead] = param[dead].to(shadow.dtype)
                param[dead] = 0
                for value in optimizer.state.get(param, {}).values():
                    if torch.is_tensor(value) and value.shape == param.shape:
                        value[dead] = 0
        if ema is not None:
            for _, bn, dead in self._rows(ema.ema):
                bn.weight[dead] = 0
                bn.bias[dead] = 0

    # -- pruning steps ------------------------------------------------------------------------------------------------
    def maybe_step(self, model: nn.Module, ema, position: float) -> dict | None:
        """Run the pruning step due at `position` (in epochs), if any: what it did (for the log), else None."""
        k = self.schedule.due(position, self.steps_done)
        if k is None:
            return None
        target = self.base_gflops * (1 - self.schedule.cut(k))
        if self.taylor_steps:  # otherwise (no step yet) the methods fall back to the data-free criterion
            correction = 1 - TAYLOR_DECAY**self.taylor_steps  # unbiased while the average is still filling
            self.method.sensitivity = {n: (t / correction).double().cpu().numpy() for n, t in self.taylor.items()}
        old = self.masks.masks
        with self._dense(model):  # score on dense values: masked channels compete for regrowth
            new = _broadcast(self.method.prune_step(model, self.masks, target, self.schedule.progress(k)).masks)
        compensated = 0
        if self.compensation is not None:  # statistics of the still-masked model, for the convs that lose inputs
            alive = (self.graph.alive_components(old), self.graph.alive_components(new))
            stats = self.compensation.statistics(model, self.images, self.compensation.losing(*alive))
            models = [model] + ([ema.ema] if ema is not None else [])
            compensated = self.compensation.step(models, stats, *alive)
        self.set_masks(new, model, ema)
        self.steps_done = k + 1
        return {"step": k, "target_gflops": target, "compensated": compensated, **_changes(old, self.masks.masks)}

    @torch.no_grad()
    def set_masks(self, masks: dict[str, np.ndarray], model: nn.Module, ema=None):
        """Switch to new masks: newly masked rows are zeroed, regrown rows get their shadow values back."""
        self.before_optimizer_step(model)  # all rows dense
        if ema is not None:  # regrown rows of the EMA start from the trained shadow values, not from zero
            self.before_optimizer_step(ema.ema)
        self.shadow = self._read_bn(model)
        self.masks = MaskSet(self.graph, masks)
        self._rows_cache = WeakKeyDictionary()
        self.masks.apply(model)
        if ema is not None:
            self.masks.apply(ema.ema)

    @contextmanager
    def _dense(self, model):
        self.before_optimizer_step(model)
        try:
            yield
        finally:
            self.masks.apply(model)

    # -- bookkeeping --------------------------------------------------------------------------------------------------
    def _read_bn(self, model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        modules = dict(model.named_modules())
        return {n: (modules[n].weight.detach().float().clone(), modules[n].bias.detach().float().clone())
                for n in self.norms}  # fmt: skip

    def widths(self) -> list[int]:
        return [int(self.masks.masks[g.name].sum()) for g in self.graph.groups]

    def state_dict(self) -> dict:
        return {
            "settings": self.settings.to_dict(),
            "masks": self.masks.state_dict(),
            "steps_done": self.steps_done,
            "shadow": {k: (w.cpu().clone(), b.cpu().clone()) for k, (w, b) in self.shadow.items()},
            "method": self.method.state_dict(),
            "sensitivity": self.method.sensitivity,
            "taylor": {k: v.cpu().clone() for k, v in self.taylor.items()},
            "taylor_steps": self.taylor_steps,
            "compensation": self.compensation.state_dict() if self.compensation is not None else None,
        }

    def load_state_dict(self, state: dict, model: nn.Module, ema=None):
        self.shadow = {k: (w.float(), b.float()) for k, (w, b) in state["shadow"].items()}
        self.steps_done = int(state["steps_done"])
        self.method.load_state_dict(state.get("method", {}))
        self.method.sensitivity = state.get("sensitivity")
        device = next(model.parameters()).device
        self.taylor = {k: v.to(device) for k, v in state.get("taylor", {}).items()}
        self.taylor_steps = int(state.get("taylor_steps", 0))
        if self.compensation is not None and state.get("compensation") is not None:
            self.compensation.load_state_dict(state["compensation"])
        self.masks = MaskSet.from_state_dict(self.graph, state["masks"])
        self._rows_cache = WeakKeyDictionary()
        self.masks.apply(model)
        if ema is not None:
            self.masks.apply(ema.ema)


def _changes(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, int]:
    """Channels newly masked, newly regrown, and swapped within a group at the same width (min of the two)."""
    pruned = {k: int((old[k] & ~new[k]).sum()) for k in new}
    regrown = {k: int((~old[k] & new[k]).sum()) for k in new}
    return {"pruned": sum(pruned.values()), "regrown": sum(regrown.values()),
            "changed": sum(min(pruned[k], regrown[k]) for k in new)}  # fmt: skip


def _broadcast(masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Make every DDP rank use rank 0's masks (they already agree when weights are in sync; this guarantees it)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return masks
    payload = [masks]
    torch.distributed.broadcast_object_list(payload, src=0)
    return payload[0]
