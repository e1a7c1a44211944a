"""Pruning during training: runs the method's hooks at their points and keeps the masks exact across optimizer steps,
EMA and resume.

Masked channels have zero BN scale/shift in the model (see masks/mask.py), so the network trains *as* the light model.
Their dense values live on as shadow copies that keep training (DPF-style): right before each optimizer step the
shadows are put back into the masked rows, so the step updates them with the gradient the masked channel receives;
right after, the new values are saved and the rows zeroed again. A regrown channel thus returns with trained values
instead of stale ones. Optimizer moments of masked rows are zeroed. Both happen in torch's optimizer step pre/post
hooks, so they run exactly around the real steps (AMP's scaler skips a step with inf gradients, hooks included);
the EMA is updated after the post hook and so only ever averages zeros into masked rows.
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from weakref import WeakKeyDictionary

import numpy as np
import torch
from torch import nn

from ..errors import YoloPruneError
from ..graph.analyze import analyze
from ..masks.budget import Budget
from ..masks.mask import MaskSet
from ..methods import PruneContext, get_method
from ..methods.schedule import PruneSettings, Schedule
from ..slim.merge import merge_clusters
from .compensate import Compensation


class InTrainingPruner:
    """The method, its schedule and context, the masks and their shadows, for one training model.

    `loss(model, batches) -> float` (the trainer's detection loss) backs `ctx.loss` on the cached training batches.
    """

    def __init__(self, model: nn.Module, settings: PruneSettings, epochs: int, loss=None):
        self.settings, self.model = settings, model
        self.graph = analyze(model, settings.imgsz)
        self.budget = Budget(self.graph, settings.round_to, settings.min_keep, cost_model(model, self.graph, settings))
        self.method = get_method(settings.method)(self.graph, self.budget, settings.options)
        self.schedule = Schedule(settings, epochs)
        self.base_gflops = self.graph.gflops()
        self.base_cost = self.budget.cost.total()  # GFLOPs, or ms with --latency: what the schedule's cut applies to
        self.masks = MaskSet(self.graph)
        self.steps_done = 0
        self.stopped = False  # a method ended pruning early (on_epoch_end)
        self.norms = sorted({s.site.norm_name for s in self.graph.sites if s.site.norm_name})
        self.shadow = self._read_bn(model)
        self._rows_cache: WeakKeyDictionary = WeakKeyDictionary()
        self.compensation = Compensation(self.graph) if settings.compensate else None
        self.images: torch.Tensor | None = None  # the latest training images (set by the trainer), for compensation
        self.batches: deque = deque(maxlen=max(self.method.cache_batches, 0) or None)
        self._loss = loss
        self._stepped = False  # an optimizer step ran since the last batch end
        self.ctx = PruneContext(
            model=model,
            graph=self.graph,
            budget=self.budget,
            masks=self.masks,
            settings=settings,
            base_gflops=self.base_gflops,
            loss_fn=self.loss if loss is not None and self.method.cache_batches else None,
        )

    @property
    def final(self) -> bool:
        """True once the last pruning step ran or the method ended pruning: the architecture is fixed from here on."""
        return self.stopped or self.steps_done >= len(self.schedule.positions)

    def context(self, **fields) -> PruneContext:
        """The context, refreshed with the current state (and `fields` for this call)."""
        c = self.ctx
        c.masks, c.final, c.images, c.step, c.target_gflops = self.masks, self.final, self.images, None, None
        c.progress = self.schedule.progress(self.steps_done - 1) if self.steps_done else 0.0
        for k, v in fields.items():
            setattr(c, k, v)
        c.phase = self.schedule.phase(c.position)
        return c

    # -- before training: setup, optimizer ----------------------------------------------------------------------------
    def setup(self) -> None:
        """The method's `setup`: the model exists, the optimizer and EMA do not."""
        self.method.setup(self.context(ema=None, optimizer=None))

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Right after the optimizer is built: the method's parameter groups, and the step hooks."""
        self.ctx.optimizer = optimizer
        for group in self.method.param_groups(self.context()):
            optimizer.add_param_group(group)
        optimizer.register_step_pre_hook(self._before_step)
        optimizer.register_step_post_hook(self._after_step)

    # -- around every optimizer step ----------------------------------------------------------------------------------
    def _before_step(self, optimizer, args, kwargs) -> None:
        """Gradients are final (unscaled, clipped): shadows in, then the method (it sees masked rows dense)."""
        self.shadows_in(self.model)
        self.method.before_optimizer_step(self.context(optimizer=optimizer))

    @torch.no_grad()
    def _after_step(self, optimizer, args, kwargs) -> None:
        """Save the trained shadow rows, zero them again, zero their optimizer moments."""
        for name, bn, dead in self._rows(self.model):
            for param, shadow in zip((bn.weight, bn.bias), self.shadow[name]):
                shadow[dead] = param[dead].to(shadow.dtype)
                param[dead] = 0
                for value in optimizer.state.get(param, {}).values():
                    if torch.is_tensor(value) and value.shape == param.shape:
                        value[dead] = 0
        self._stepped = True

    def batch_end(self, model: nn.Module, ema, position: float) -> dict | None:
        """After each training batch: the method's after_optimizer_step if a step ran (the EMA is updated by now),
        then the pruning step due at `position`, if any (what it did, for the log)."""
        self.ctx.ema = ema
        if self._stepped:
            self._stepped = False
            self.method.after_optimizer_step(self.context(position=position))
        return self.maybe_step(model, ema, position)

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

    @torch.no_grad()
    def shadows_in(self, model: nn.Module) -> None:
        """Put the dense shadow values back into masked rows (the optimizer step then trains them too)."""
        for name, bn, dead in self._rows(model):
            bn.weight[dead] = self.shadow[name][0][dead].to(bn.weight.dtype)
            bn.bias[dead] = self.shadow[name][1][dead].to(bn.bias.dtype)

    # -- pruning steps ------------------------------------------------------------------------------------------------
    def maybe_step(self, model: nn.Module, ema, position: float) -> dict | None:
        """Run the pruning step due at `position` (in epochs), if any: what it did (for the log), else None."""
        k = None if self.final else self.schedule.due(position, self.steps_done)
        if k is None:
            return None
        target = self.base_cost * (1 - self.schedule.cut(k))
        old = self.masks.masks
        ctx = self.context(position=position, step=k, target_gflops=target, progress=self.schedule.progress(k))
        with self._dense(model):  # score on dense values: masked channels compete for regrowth
            new = _broadcast(self.method.prune_step(ctx).masks)
        compensated = self._switch(new, model, ema)
        self.steps_done = k + 1
        flops = self.budget.cost.unit == "GFLOPs"  # the log's target column is in GFLOPs: empty for a latency run
        return {"step": k, "target_gflops": target if flops else None, "compensated": compensated,
                **_changes(old, self.masks.masks),
                "extra": self._take_logged()}  # fmt: skip

    def epoch_end(self, model: nn.Module, ema, metrics: dict | None, position: float) -> dict | None:
        """The method's on_epoch_end; if it ends pruning, the masks are final from here on (what changed, for the
        log, when it also chose other masks)."""
        result = self.method.on_epoch_end(self.context(metrics=metrics, position=position))
        result = _broadcast(result.masks if isinstance(result, MaskSet) else bool(result))
        if self.final or result is False:
            return None
        self.stopped = True
        if result is True:
            return None
        old = self.masks.masks
        compensated = self._switch(result, model, ema)
        return {"step": self.steps_done, "target_gflops": self.masks.gflops(), "compensated": compensated,
                **_changes(old, self.masks.masks), "extra": self._take_logged()}  # fmt: skip

    def _take_logged(self) -> dict:
        logged = dict(self.ctx.logged)
        self.ctx.logged.clear()
        return logged

    def _switch(self, new: dict[str, np.ndarray], model: nn.Module, ema) -> int:
        """Move to new masks (compensating the convs that lose inputs when on); returns the convs compensated."""
        compensated = 0
        if self.compensation is not None:  # statistics of the still-masked model, for the convs that lose inputs
            alive = (self.graph.alive_components(self.masks.masks), self.graph.alive_components(new))
            stats = self.compensation.statistics(model, self.images, self.compensation.losing(*alive))
            models = [model] + ([ema.ema] if ema is not None else [])
            compensated = self.compensation.step(models, stats, *alive)
        self.set_masks(new, model, ema)
        return compensated

    @torch.no_grad()
    def set_masks(self, masks: dict[str, np.ndarray], model: nn.Module, ema=None):
        """Switch to new masks: newly masked rows are zeroed, regrown rows get their shadow values back."""
        self.shadows_in(model)  # all rows dense
        if ema is not None:  # regrown rows of the EMA start from the trained shadow values, not from zero
            self.shadows_in(ema.ema)
        self.shadow = self._read_bn(model)
        self.masks = MaskSet(self.graph, masks)
        self._rows_cache = WeakKeyDictionary()
        self.masks.apply(model)
        if ema is not None:
            self.masks.apply(ema.ema)

    @contextmanager
    def _dense(self, model):
        self.shadows_in(model)
        try:
            yield
        finally:
            self.masks.apply(model)

    # -- end of the run -----------------------------------------------------------------------------------------------
    def finish(self, model: nn.Module, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The method's `finish` on a checkpoint's model (before slimming); merges the clusters it returns exactly
        (slim/merge.py: each cluster becomes its first channel, the consumers' input weights of the others summed)."""
        ctx = self.context(model=model, masks=MaskSet(self.graph, masks), ema=None, optimizer=None)
        try:
            clusters = self.method.finish(ctx)
        finally:
            ctx.model = self.model
        if not clusters:
            return masks
        return merge_clusters(model, self.graph, MaskSet(self.graph, masks), clusters).masks

    # -- ctx.loss -----------------------------------------------------------------------------------------------------
    def cache(self, batch: dict) -> None:
        """Keep a preprocessed training batch (on CPU, images as uint8: exact, 4x smaller) for ctx.loss."""
        if self.batches.maxlen:
            kept = {k: v.detach().cpu() for k, v in batch.items() if torch.is_tensor(v) and k != "img"}
            kept["img"] = (batch["img"].detach() * 255).round().to("cpu", torch.uint8)
            self.batches.append(kept)

    @torch.no_grad()
    def loss(self, masks: MaskSet | None = None, batches: int | None = None) -> float:
        """The trainer's detection loss on the cached batches with `masks` (default: the current ones) applied;
        every BN value is put back exactly afterwards."""
        cached = list(self.batches)[-batches:] if batches else list(self.batches)
        if not cached:
            raise YoloPruneError("ctx.loss was called before any training batch was cached.")
        modules = dict(self.model.named_modules())
        saved = {n: (modules[n].weight.detach().clone(), modules[n].bias.detach().clone()) for n in self.norms}
        try:
            self.shadows_in(self.model)
            (masks or self.masks).apply(self.model)
            return self._loss(self.model, cached)
        finally:
            for n, (w, b) in saved.items():
                modules[n].weight.copy_(w)
                modules[n].bias.copy_(b)

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
            "stopped": self.stopped,
            "shadow": {k: (w.cpu().clone(), b.cpu().clone()) for k, (w, b) in self.shadow.items()},
            "method": self.method.state_dict(),
            "compensation": self.compensation.state_dict() if self.compensation is not None else None,
        }

    def load_state_dict(self, state: dict, model: nn.Module, ema=None):
        self.shadow = {k: (w.float(), b.float()) for k, (w, b) in state["shadow"].items()}
        self.steps_done = int(state["steps_done"])
        self.stopped = bool(state.get("stopped", False))
        self.method.load_state_dict(state.get("method", {}))
        if self.compensation is not None and state.get("compensation") is not None:
            self.compensation.load_state_dict(state["compensation"])
        self.masks = MaskSet.from_state_dict(self.graph, state["masks"])
        self._rows_cache = WeakKeyDictionary()
        self.masks.apply(model)
        if ema is not None:
            self.masks.apply(ema.ema)


def cost_model(model: nn.Module, graph, settings: PruneSettings, measure=None):
    """None (FLOPs, the budget's default) or the latency cost model of `settings.lut` or the cached table (measured
    with `measure` when there is none yet; without it, one clear error)."""
    if not settings.latency:
        return None
    from ..latency.cost import latency_cost

    return latency_cost(model, graph, backend=settings.backend, lut=settings.lut, measure=measure)


def _changes(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, int]:
    """Channels newly masked, newly regrown, and swapped within a group at the same width (min of the two)."""
    pruned = {k: int((old[k] & ~new[k]).sum()) for k in new}
    regrown = {k: int((~old[k] & new[k]).sum()) for k in new}
    return {"pruned": sum(pruned.values()), "regrown": sum(regrown.values()),
            "changed": sum(min(pruned[k], regrown[k]) for k in new)}  # fmt: skip


def _broadcast(value):
    """Make every DDP rank use rank 0's decision (masks agree when weights are in sync; this guarantees it)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    payload = [value]
    torch.distributed.broadcast_object_list(payload, src=0)
    return payload[0]
