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
        self.taylor: dict[str, torch.Tensor] = {}  # per BN: summed (gamma*dL/dgamma + beta*dL/dbeta)^2
        self.taylor_steps = 0  # optimizer steps summed into `taylor` since the last pruning step

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
            self.taylor[name] = self.taylor[name] + term if name in self.taylor else term
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
    def maybe_step(self, model: nn.Module, ema, position: float) -> bool:
        """Run the pruning step due at `position` (in epochs), if any. Returns True if the masks changed."""
        k = self.schedule.due(position, self.steps_done)
        if k is None:
            return False
        target = self.base_gflops * (1 - self.schedule.cut(k))
        if self.taylor_steps:  # otherwise (no step since the last prune) keep the previous measurement
            steps = self.taylor_steps
            self.method.sensitivity = {n: (t / steps).double().cpu().numpy() for n, t in self.taylor.items()}
            self.taylor, self.taylor_steps = {}, 0
        with self._dense(model):  # score on dense values: masked channels compete for regrowth
            new = self.method.prune_step(model, self.masks, target, self.schedule.progress(k))
        self.set_masks(_broadcast(new.masks), model, ema)
        self.steps_done = k + 1
        return True

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
        }

    def load_state_dict(self, state: dict, model: nn.Module, ema=None):
        self.shadow = {k: (w.float(), b.float()) for k, (w, b) in state["shadow"].items()}
        self.steps_done = int(state["steps_done"])
        self.method.load_state_dict(state.get("method", {}))
        self.method.sensitivity = state.get("sensitivity")
        device = next(model.parameters()).device
        self.taylor = {k: v.to(device) for k, v in state.get("taylor", {}).items()}
        self.taylor_steps = int(state.get("taylor_steps", 0))
        self.masks = MaskSet.from_state_dict(self.graph, state["masks"])
        self._rows_cache = WeakKeyDictionary()
        self.masks.apply(model)
        if ema is not None:
            self.masks.apply(ema.ema)


def _broadcast(masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Make every DDP rank use rank 0's masks (they already agree when weights are in sync; this guarantees it)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return masks
    payload = [masks]
    torch.distributed.broadcast_object_list(payload, src=0)
    return payload[0]
