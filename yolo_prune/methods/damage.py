"""Head damage: how much masking a channel would change the features the detection head reads (second order).

Why not the Taylor score of the loss: a run that distils from its starting model (train/distill.py) minimises the
distance to the teacher at the head's inputs, and at the start of pruning that distance is zero, so is its gradient,
and a first-order score is blind to the damage it is about to do (measured: the budget then guts the P3/P4 neck).
The change that matters is second order: zeroing channel c moves the head inputs f by J d_c (J = df/d(channel),
d_c = the channel's removal), and the distillation loss rises by |J d_c|^2 / |f|^2 (Gauss-Newton). Its estimate costs
one backward per projection: for a random Gaussian v, E[(v . J d_c)^2] = |J d_c|^2, and for a post-BN channel
v . J d_c is gamma * dL/dgamma + beta * dL/dbeta of the scalar L = v . f (the BN form of the Taylor term). Every
channel of the network is measured by the same few backward passes.

The score is in units of distillation loss and adds over channels, which is what the shared budget needs. Measured on
the COCO YOLOv5n, -20 % FLOPs in 8 steps with compensation, no training: the held-out head-input error is 0.24 with
these scores against 0.59 with the detection-loss Taylor scores; after the issue-9 fine-tune (30 epochs) the mAP
was the same as with Taylor (0.178 vs 0.174), so it is opt-in: `--criterion damage` (docs/results.md, issue 9).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from ..graph.analyze import ChannelGraph
from ..nn.modes import modes_restored
from .criteria import global_scores

DECAY = 0.8  # moving average across pruning steps: each step adds `PROJECTIONS` samples of the latest batch
PROJECTIONS = 2


class HeadDamage:
    """Per-BN expected head-input damage of masking each channel, averaged over pruning steps (exact resume)."""

    def __init__(self, graph: ChannelGraph, decay: float = DECAY, projections: int = PROJECTIONS):
        self.graph, self.decay, self.projections = graph, decay, projections
        self.norms = sorted({s.site.norm_name for s in graph.sites if s.site.norm_name})
        self.average: dict[str, torch.Tensor] = {}
        self.observations = 0

    def observe(self, model: nn.Module, images: torch.Tensor, seed: int, batch: int | None = None) -> None:
        """Add one estimate from `images`, `batch` of them a pass (default: all at once); the model is left exactly
        as it was (weights, grads, BN statistics)."""
        modules = dict(model.named_modules())
        bns = [(n, modules[n]) for n in self.norms]
        generator = torch.Generator(device=images.device).manual_seed(seed)
        estimate = {n: torch.zeros_like(bn.weight, dtype=torch.float32) for n, bn in bns}
        chunks = images.split(batch or len(images))
        with _isolated(model):
            for chunk in chunks:
                for _ in range(self.projections):
                    model.zero_grad(set_to_none=True)
                    _projection(model, chunk, generator).backward()
                    for n, bn in bns:
                        if bn.weight.grad is not None and bn.bias.grad is not None:
                            term = bn.weight.detach() * bn.weight.grad + bn.bias.detach() * bn.bias.grad
                            estimate[n] += term.float().pow(2) / (self.projections * len(chunks))
        for n, value in estimate.items():
            previous = self.average.get(n, torch.zeros_like(value))
            self.average[n] = self.decay * previous + (1 - self.decay) * value
        self.observations += 1

    def scores(self) -> dict[str, np.ndarray]:
        """Per group channel scores (sum over a channel's member BNs), divided by one global mean."""
        correction = 1 - self.decay**self.observations  # unbiased while the average fills
        per_conv = {s.site.name: (self.average[s.site.norm_name] / correction).double().cpu().numpy()
                    for s in self.graph.sites if s.site.norm_name in self.average}  # fmt: skip
        return global_scores(self.graph, per_conv)

    def state_dict(self) -> dict:
        return {"average": {k: v.cpu().clone() for k, v in self.average.items()}, "observations": self.observations}

    def load_state_dict(self, state: dict) -> None:
        self.average = {k: v.float() for k, v in state["average"].items()}
        self.observations = int(state["observations"])


def _projection(model: nn.Module, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """v . f over the head's input levels, each level scaled to unit energy per image (the distillation's units)."""
    features = {}
    hook = model.model[-1].register_forward_pre_hook(lambda _m, args: features.update(enumerate(args[0])))
    try:
        model(images)
    finally:
        hook.remove()
    total = images.new_zeros((), dtype=torch.float32)
    for f in features.values():
        f = f.float()
        v = torch.randn(f.shape, generator=generator, device=f.device)
        scale = (f.detach().pow(2).mean() * f[0].numel()).sqrt().clamp_min(1e-12)
        total = total + (v * f).sum() / scale
    return total


@contextmanager
def _isolated(model: nn.Module):
    """Train-mode forward with batch statistics that never update the running ones; modes and gradients restored."""
    grads = {p: p.grad for p in model.parameters()}
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    try:
        with modes_restored(model):
            model.train()
            for m in bns:
                m.momentum = 0.0
            yield
    finally:
        for m, (momentum, tracked) in zip(bns, momenta):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        for p, g in grads.items():
            p.grad = g
