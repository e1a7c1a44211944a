"""IW: additional importance weights per filter, pruned under an error tolerance instead of a fixed rate.

Paper: "Compression of Deep Convolutional Neural Network Using Additional Importance-Weight-Based Filter Pruning
Approach", Sawant, Wiedmann, Göb, Holzer, Lang, Götz; Applied Sciences 12(21):11184, 2022; DOI 10.3390/app122111184.
Only the abstract is public: every filter gets an additional importance weight that "helps each filter learn its
responsibility", with several initialisation strategies, and pruning stops at "a predefined error tolerance level
instead of a rate". Our reconstruction (docs/methods.md, "IW"):
- one learnable weight a per filter of every prunable conv, applied after its BatchNorm: y = act(a * BN(x)); the
  weights train with the network in their own optimizer group (own lr, no weight decay) with an L1 pull towards zero
  (`--iw-sparsity`); initialised to ones, U(0, 1) or the filter's L1 norm over the layer's largest (`--iw-init`);
- the EMA model that Ultralytics validates and saves holds the weights folded into its BN affine, so every checkpoint
  is an ordinary Ultralytics model; at the end they are folded into the training model too and the hooks go;
- each pruning step removes, globally, the channels of least mean |a| per FLOP saved towards the step's target
  (`--flops` is the cap), after measuring on validation images what the step costs: mAP50-95 of the EMA model before
  and after; while the summed cost stays within `--tolerance` the step is kept, the step that crosses it is rolled
  back and pruning ends there.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import numpy as np
import torch
from torch import nn

from ..errors import YoloPruneError
from ..graph.analyze import ChannelGraph
from ..masks.mask import MaskSet
from ..options import setting
from .base import MethodOptions, PruningMethod, register_method
from .criteria import per_group

INIT_MODES = ("ones", "uniform", "l1")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
HIST_BINS = np.linspace(0.0, 2.0, 41)  # |a| histogram bins for the plot; larger values land in the last bin


def initial_weights(mode: str, conv_weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Starting importance weights of a conv's filters: ones, U(0, 1), or L1 norm over the layer's largest."""
    n = conv_weight.shape[0]
    if mode == "ones":
        return torch.ones(n)
    if mode == "uniform":
        return torch.rand(n, generator=generator)
    if mode == "l1":
        norms = conv_weight.detach().float().abs().flatten(1).sum(1).cpu()
        return norms / norms.max().clamp_min(1e-12)
    raise ValueError(f"unknown initialisation {mode!r}; choose one of {INIT_MODES}")


class ImportanceWeights(nn.Module):
    """One learnable weight per filter of each prunable conv, multiplied onto its BatchNorm's output.

    The weights are not parameters of the model: Ultralytics' optimizer builder, ModelEMA and checkpoints see an
    unchanged model. They act through one global forward hook that only touches the BN modules of the model given
    to `attach` (a deep copy, like the EMA, is a different object and stays ungated).
    """

    def __init__(self, graph: ChannelGraph, model: nn.Module, init: str = "ones", seed: int = 0):
        super().__init__()
        conv_of = {}
        for s in graph.sites:
            if s.site.norm_name and (s.out_comp >= 0).any():
                conv_of.setdefault(s.site.norm_name, s.site.name)
        self.norms = sorted(conv_of)
        self.convs = [conv_of[n] for n in self.norms]
        modules = dict(model.named_modules())
        g = torch.Generator().manual_seed(seed)
        self.weights = nn.ParameterList(
            nn.Parameter(initial_weights(init, modules[c].weight, g).to(modules[n].weight.device))
            for n, c in zip(self.norms, self.convs)
        )
        self._targets: WeakKeyDictionary = WeakKeyDictionary()  # BN module -> index into self.weights
        self._handle = None

    # -- forward ------------------------------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> ImportanceWeights:
        modules = dict(model.named_modules())
        for i, name in enumerate(self.norms):
            self._targets[modules[name]] = i
        if self._handle is None:
            self._handle = torch.nn.modules.module.register_module_forward_hook(_gate_hook(weakref.ref(self)))
            weakref.finalize(self, self._handle.remove)
        return self

    def __getstate__(self):  # a copy or pickle acts on nothing: the hook and its targets belong to this object
        return {**self.__dict__, "_targets": None, "_handle": None}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._targets = WeakKeyDictionary()

    def detach(self):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._targets = WeakKeyDictionary()

    def gate(self, module: nn.Module, output: torch.Tensor) -> torch.Tensor | None:
        i = self._targets.get(module)
        return None if i is None else output * self.weights[i].to(output.dtype).view(1, -1, 1, 1)

    @torch.no_grad()
    def fold(self, model: nn.Module) -> nn.Module:
        """BN(x) * a as a plain BN: gamma <- a * gamma, beta <- a * beta (exact in train and eval mode)."""
        modules = dict(model.named_modules())
        for name, a in zip(self.norms, self.weights):
            bn = modules[name]
            bn.weight.mul_(a.detach().to(bn.weight))
            bn.bias.mul_(a.detach().to(bn.bias))
        return model

    def folded_copy(self, model: nn.Module) -> nn.Module:
        """An ordinary copy of `model` computing what the gated model computes."""
        return self.fold(deepcopy(model))

    # -- training -----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def pull(self, strength: float):
        """The L1 sparsity pull: d/da of strength * sum|a|, added to the loss gradient.

        Under DDP the loss gradients are averaged over the ranks first: the weights are not parameters of the
        DDP-wrapped model, so nothing else keeps the ranks' copies equal.
        """
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        for a in self.weights:
            if a.grad is None:
                a.grad = torch.zeros_like(a)
            if distributed:
                torch.distributed.all_reduce(a.grad)
                a.grad /= torch.distributed.get_world_size()
            a.grad.add_(a.sign(), alpha=strength)

    @torch.no_grad()
    def follow_ema(self, ema, model: nn.Module, norm_keep: dict[str, torch.Tensor]):
        """After ModelEMA's update, make its BN the EMA of the *folded* values: ema += (1 - d) * (a - 1) * raw.

        ModelEMA averaged the raw BN affine of `model`; the EMA model has no gates, so it must average a * raw
        instead. Masked rows are left at the zero the engine keeps them at.
        """
        if not getattr(ema, "enabled", True):
            return
        d = ema.decay(ema.updates)
        ema_modules, modules = dict(ema.ema.named_modules()), dict(model.named_modules())
        for name, a in zip(self.norms, self.weights):
            scale = (1 - d) * (a.detach() - 1)
            keep = norm_keep.get(name)
            if keep is not None:
                scale = scale * keep.to(scale.device, scale.dtype)
            for target, raw in ((ema_modules[name].weight, modules[name].weight), (ema_modules[name].bias,
                                                                                  modules[name].bias)):
                target.add_(scale.to(target) * raw.detach().to(target))

    # -- reading ------------------------------------------------------------------------------------------------------
    def scores(self, graph: ChannelGraph) -> dict[str, np.ndarray]:
        """Per group channel: mean |a| over the coupled filters it stands for (higher = keep)."""
        values = {c: a.detach().abs().double().cpu().numpy() for c, a in zip(self.convs, self.weights)}
        total = per_group(graph, values)
        count = per_group(graph, {c: np.ones_like(v) for c, v in values.items()})
        return {k: np.where(count[k] > 0, total[k] / np.maximum(count[k], 1), 1.0) for k in total}

    def alive_values(self, masks: MaskSet) -> np.ndarray:
        """|a| of every filter still alive under `masks` (masked filters only feel the pull; they are gone)."""
        out = []
        for name, a in zip(self.norms, self.weights):
            v = a.detach().abs().float().cpu().numpy()
            keep = masks.norm_keep.get(name)
            out.append(v if keep is None else v[keep.cpu().numpy()])
        return np.concatenate(out) if out else np.zeros(0)


def _gate_hook(ref):
    def hook(module, inputs, output):
        weights = ref()
        return None if weights is None or not weights._targets else weights.gate(module, output)

    return hook


def describe(values: np.ndarray) -> dict[str, float]:
    """Quantiles of |a| for the prune log, plus the share of filters below 0.1 (what the pull has silenced)."""
    if values.size == 0:
        return {}
    qs = np.quantile(values, QUANTILES)
    out = {f"iw_q{int(q * 100):02d}": float(v) for q, v in zip(QUANTILES, qs)}
    out["iw_below_0.1"] = float((values < 0.1).mean())
    return out


def histogram(values: np.ndarray) -> list[int]:
    return np.histogram(np.clip(values, HIST_BINS[0], HIST_BINS[-1]), HIST_BINS)[0].tolist()


@contextmanager
@torch.no_grad()
def masked(model: nn.Module, masks: MaskSet):
    """`model` under `masks` for the duration of the block, every BN value put back exactly afterwards."""
    modules = dict(model.named_modules())
    saved = {n: (modules[n].weight.detach().clone(), modules[n].bias.detach().clone()) for n in masks.norm_keep}
    try:
        yield masks.apply(model)
    finally:
        for n, (w, b) in saved.items():
            modules[n].weight.copy_(w)
            modules[n].bias.copy_(b)


PNG_NAME = "iw_weights.png"


def plot_weights(history: list[dict], path) -> None:
    """The importance weights over the run: quantiles of the alive |a| per step, and their histogram per step."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and leaves pyplot's backend alone

    fig = Figure(figsize=(9.0, 7.0), layout="constrained")
    lines, heat = fig.subplots(2, 1, height_ratios=[1, 1.3])
    x = [h["position"] for h in history]
    for key in describe(np.ones(1)):
        if key.startswith("iw_q"):
            lines.plot(x, [h["quantiles"].get(key) for h in history], marker=".", label=f"{key[3:]} %")
    lines.set_ylabel("|a| (alive filters)")
    lines.set_title("Importance weights: quantiles at each pruning step and epoch end")
    lines.legend(loc="upper right", fontsize=8, title="quantile", title_fontsize=8)
    counts = np.array([h["hist"] for h in history], float).T
    counts /= np.maximum(counts.sum(0, keepdims=True), 1)
    mesh = heat.pcolormesh(np.arange(len(x) + 1), HIST_BINS, counts, cmap="viridis", shading="flat")
    fig.colorbar(mesh, ax=heat, label="share of alive filters")
    ticks = np.unique(np.linspace(0, len(x) - 1, min(len(x), 12)).round().astype(int))
    heat.set_xticks(ticks + 0.5, [f"{x[i]:.2f}" for i in ticks])
    heat.set_xlabel("training position (epochs): pruning steps and epoch ends")
    heat.set_ylabel(f"|a| (last bin: >= {HIST_BINS[-2]:g})")
    heat.set_title("Histogram of the importance weights over the run")
    fig.savefig(path, dpi=100)


@dataclass
class ToleranceStop:
    """Pruning goes on while the mAP50-95 it has cost fits in `tolerance`; the step that crosses it is refused.

    The cost of a step is measured on the same weights just before and just after it (training between steps moves
    the accuracy too, and that is not pruning's doing); the costs add up over the steps, never below zero.
    """

    tolerance: float
    spent: float = 0.0  # mAP50-95 lost to the kept steps so far
    stopped: bool = False

    def judge(self, before: float, after: float) -> bool:
        """True: keep the step; False: roll it back (and every later step: pruning has ended)."""
        if self.stopped:
            return False
        drop = before - after
        if self.spent + drop > self.tolerance:
            self.stopped = True
            return False
        self.spent = max(0.0, self.spent + drop)
        return True

    def state_dict(self) -> dict:
        return {"spent": self.spent, "stopped": self.stopped}

    def load_state_dict(self, state: dict):
        self.spent, self.stopped = float(state["spent"]), bool(state["stopped"])


@dataclass
class IWOptions(MethodOptions):
    iw_init: str = setting("ones", "IW: initial importance weights: ones, uniform (U(0, 1)) or l1 (each filter's L1 "
                           "norm over the largest of its layer)", choices=list(INIT_MODES))  # fmt: skip
    iw_lr: float = setting(10.0, "IW: learning rate of the importance weights, as a multiple of the network's")
    iw_sparsity: float = setting(0.01, "IW: L1 pull of the importance weights towards zero (added to their gradient)")
    tolerance: float = setting(0.01, "IW: mAP50-95 the pruning steps may cost in all (0.01 = one point), measured on "
                               "validation images at each step; the step that crosses it is rolled back and pruning "
                               "ends there (--flops is then a cap)")  # fmt: skip
    tolerance_images: int = setting(500, "IW: validation images measured before and after each pruning step (0: all)")

    def check(self):
        if self.iw_init not in INIT_MODES:
            raise YoloPruneError(f"--iw-init must be one of {', '.join(INIT_MODES)}, got {self.iw_init!r}.")
        if not self.iw_lr > 0:
            raise YoloPruneError(f"--iw-lr must be a positive multiple of the learning rate, got {self.iw_lr}.")
        if not self.iw_sparsity >= 0:
            raise YoloPruneError(f"--iw-sparsity must be >= 0 (0 switches the pull off), got {self.iw_sparsity}.")
        if not 0 <= self.tolerance <= 1:
            raise YoloPruneError(f"--tolerance is an mAP50-95 drop within [0, 1] (0.01 = one point), got "
                                 f"{self.tolerance}.")  # fmt: skip
        if self.tolerance_images < 0:
            raise YoloPruneError(f"--tolerance-images must be >= 0 (0: the whole validation set), got "
                                 f"{self.tolerance_images}.")  # fmt: skip


@register_method("iw")
class ImportanceWeight(PruningMethod):
    Options = IWOptions

    def __init__(self, graph, budget, options=None):
        super().__init__(graph, budget, options)
        self.weights: ImportanceWeights | None = None
        self.stop = ToleranceStop(self.options.tolerance)
        self.history: list[dict] = []  # at each pruning step and epoch end: quantiles, histogram of the alive |a|
        self._model = None  # the training model the weights act on (a weak reference)

    def setup(self, ctx):
        self.weights = ImportanceWeights(self.graph, ctx.model, self.options.iw_init).attach(ctx.model)
        self._model = weakref.ref(ctx.model)

    def param_groups(self, ctx):
        lr = ctx.optimizer.param_groups[0].get("initial_lr", ctx.optimizer.param_groups[0]["lr"]) * self.options.iw_lr
        return [{"params": list(self.weights.parameters()), "lr": lr, "initial_lr": lr, "weight_decay": 0.0,
                 "param_group": "iw"}]  # fmt: skip

    def before_optimizer_step(self, ctx):
        self.weights.pull(self.options.iw_sparsity)

    def after_optimizer_step(self, ctx):
        if ctx.ema is not None:
            self.weights.follow_ema(ctx.ema, ctx.model, ctx.masks.norm_keep)

    def score(self, ctx):
        return self.weights.scores(self.graph)

    def prune_step(self, ctx) -> MaskSet:
        ctx.log(**self._record(ctx))
        if self.stop.stopped:
            ctx.log(iw_decision="stopped")
            return ctx.masks
        new = MaskSet(self.graph, self.budget.allocate(self.score(ctx), ctx.target_gflops, start=ctx.masks.masks))
        if ctx.val_fn is None:  # no validation data here (a DDP rank other than 0): rank 0's masks are broadcast
            return new
        before, after = self._map(ctx, ctx.masks), self._map(ctx, new)
        kept = self.stop.judge(before, after)
        ctx.log(map_before=before, map_after=after, map_spent=self.stop.spent, candidate_gflops=new.gflops(),
                iw_decision="kept" if kept else "rolled back")  # fmt: skip
        return new if kept else ctx.masks

    def _map(self, ctx, masks: MaskSet) -> float:
        """mAP50-95 under `masks` of the model Ultralytics validates and saves (the EMA, weights folded in)."""
        model = ctx.ema.ema if ctx.ema is not None else self.weights.folded_copy(ctx.model)
        with masked(model, masks):
            return float(ctx.validate(model, self.options.tolerance_images)["metrics/mAP50-95(B)"])

    def on_epoch_end(self, ctx):
        self._record(ctx)
        return self.stop.stopped

    def _record(self, ctx) -> dict[str, float]:
        """The alive |a| now, into the history the figure is drawn from; their quantiles for the log."""
        values = self.weights.alive_values(ctx.masks)
        self.history.append({"position": ctx.position, "quantiles": describe(values), "hist": histogram(values)})
        return self.history[-1]["quantiles"]

    def finish(self, ctx):
        """Checkpoints hold the EMA, whose BN already has the weights folded in; the training model gets them now."""
        model = self._model() if self._model is not None else None
        if model is not None and self.weights is not None and self.weights._handle is not None:
            self.weights.fold(model)
            self.weights.detach()
        if self.history and ctx.run_dir is not None:
            plot_weights(self.history, ctx.run_dir / PNG_NAME)
        return None

    def state_dict(self):
        return {"weights": [a.detach().cpu().clone() for a in self.weights.weights] if self.weights else None,
                "stop": self.stop.state_dict(), "history": self.history}  # fmt: skip

    def load_state_dict(self, state):
        if state.get("weights") is not None and self.weights is not None:
            with torch.no_grad():
                for a, saved in zip(self.weights.weights, state["weights"]):
                    a.copy_(saved)
        self.stop.load_state_dict(state["stop"])
        self.history = list(state.get("history", []))
