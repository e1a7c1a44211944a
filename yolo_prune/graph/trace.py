"""Channel-flow tracing: which output channels of which convs must be pruned together.

We do not trace autograd (that is what makes generic dependency graphs slow and fragile on YOLO). Instead every module
class has a small *rule* that replays its forward on channel labels: a label is an integer id per channel, a conv makes
fresh labels for its outputs, concat/chunk/upsample move labels around, and an elementwise add *unites* the labels of
its inputs (a residual couples channels). Channels whose labels are united form one prunable unit; a unit that touches
a fixed label (the image, a Detect output, an unknown module) stays.

A rule for a new module class:

    @channel_rule(MyBlock)
    def _my_block(t: Tracer, m: MyBlock, x: Labels) -> Labels:
        y = t.conv(m.cv1, x)
        return t.add(x, t.conv(m.cv2, y))   # residual

A class without a rule is a *barrier*: its inputs and outputs are kept at full width and it is listed in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..nn.modes import eval_mode

Labels = np.ndarray  # int64 label per channel of a tensor

_RULES: dict[type, Callable] = {}


def channel_rule(*classes: type):
    """Register the rule for exactly these classes (subclasses need their own registration: safer than guessing)."""

    def register(fn):
        for cls in classes:
            _RULES[cls] = fn
        return fn

    return register


@dataclass
class ConvSite:
    """One executed conv: the unit of FLOPs accounting, masking and slimming."""

    name: str  # qualified module name of the conv (nn.Conv2d)
    norm_name: str | None  # its BatchNorm (mask target), None for a bare conv
    inputs: Labels
    outputs: Labels
    kernel: int  # kh * kw
    depthwise: bool
    hw: int = 0  # output height*width at the profiled image size


class _UnionFind:
    def __init__(self):
        self.parent: list[int] = [0]  # label 0 is FIXED

    def new(self, n: int) -> Labels:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # FIXED (0) always wins as the root


FIXED = 0


class Tracer:
    """Replays a model's forward on channel labels, recording conv sites, couplings and barriers."""

    def __init__(self, model: nn.Module, out_channels: dict[nn.Module, int]):
        self.names = {m: n for n, m in model.named_modules()}
        self.out_channels = out_channels  # recorded output widths, for barriers
        self.uf = _UnionFind()
        self.sites: list[ConvSite] = []
        self.barriers: list[str] = []

    # -- label algebra ------------------------------------------------------------------------------------------------
    def new(self, n: int) -> Labels:
        return self.uf.new(n)

    def fixed(self, n: int) -> Labels:
        return np.full(n, FIXED, dtype=np.int64)

    def fix(self, x: Labels) -> None:
        for a in x:
            self.uf.union(int(a), FIXED)

    def add(self, *xs: Labels) -> Labels:
        """Elementwise sum (residual): the summed channels can only be removed together."""
        for y in xs[1:]:
            if len(y) != len(xs[0]):
                raise RuntimeError(f"add of {len(xs[0])} and {len(y)} channels")
            for a, b in zip(xs[0], y):
                self.uf.union(int(a), int(b))
        return xs[0]

    def cat(self, xs: list[Labels]) -> Labels:
        return np.concatenate(xs)

    def chunk(self, x: Labels, n: int = 2) -> list[Labels]:
        """Equal split (`chunk`, `split((c, c))`): the parts are united channel by channel, so they keep equal width
        and the stock module (which always splits in equal halves) stays valid after slimming."""
        parts = np.split(x, n)
        self.add(*parts)
        return parts

    # -- modules ------------------------------------------------------------------------------------------------------
    def run(self, m: nn.Module, x):
        rule = _RULES.get(type(m))
        if rule is not None:
            return rule(self, m, x)
        return self.barrier(m, x)

    def barrier(self, m: nn.Module, x) -> Labels | None:
        """Unknown module: keep everything it reads and writes."""
        for labels in x if isinstance(x, list) else [x]:
            if labels is not None:
                self.fix(labels)
        self.barriers.append(f"{self.names.get(m, '?')} ({type(m).__name__})")
        n = self.out_channels.get(m)
        return None if n is None else self.fixed(n)

    def conv(self, m: nn.Module, x: Labels, fixed_out: bool = False) -> Labels:
        """An Ultralytics-style Conv (conv -> bn -> act) or a bare nn.Conv2d (whose outputs stay fixed)."""
        conv = m.conv if hasattr(m, "conv") and isinstance(m.conv, nn.Conv2d) else m
        if not isinstance(conv, nn.Conv2d):
            return self.barrier(m, x)
        norm = getattr(m, "bn", None) if conv is not m else None
        norm = norm if isinstance(norm, nn.BatchNorm2d) else None
        if len(x) != conv.in_channels:
            raise RuntimeError(f"{self.names[conv]} reads {conv.in_channels} channels, trace gives {len(x)}")
        n = conv.out_channels
        depthwise = conv.groups > 1 and conv.groups == conv.in_channels == n
        if conv.groups > 1 and not depthwise:  # grouped conv: keep both sides whole
            self.fix(x)
            fixed_out = True
        # a channel can only be masked to exactly zero through its BN, and only if the activation keeps 0 at 0
        fixed_out = fixed_out or norm is None or not _keeps_zero(getattr(m, "act", None))
        out = self.fixed(n) if fixed_out else self.new(n)
        if depthwise:
            self.add(out, x)  # output channel i reads input channel i only
        self.sites.append(
            ConvSite(
                name=self.names[conv],
                norm_name=self.names[norm] if norm is not None else None,
                inputs=np.asarray(x, dtype=np.int64),
                outputs=out,
                kernel=conv.kernel_size[0] * conv.kernel_size[1],
                depthwise=depthwise,
            )
        )
        return out

    def sequential(self, m: nn.Module, x):
        for child in m:
            x = self.run(child, x)
        return x


_ZERO_SAFE: dict[type, bool] = {}


def _keeps_zero(act) -> bool:
    """True if act(0) == 0 (SiLU, ReLU, LeakyReLU, Identity ...): a zeroed BN output stays exactly zero."""
    if act is None or act is False:
        return True
    if type(act) not in _ZERO_SAFE:
        with torch.no_grad():
            _ZERO_SAFE[type(act)] = bool(act(torch.zeros(1)).abs().max() == 0)
    return _ZERO_SAFE[type(act)]


@dataclass
class Recording:
    """What one real forward tells the tracer: output widths and each conv call's output size."""

    out_channels: dict[nn.Module, int] = field(default_factory=dict)
    conv_hw: dict[str, list[int]] = field(default_factory=dict)


def record_forward(model: nn.Module, size: tuple[int, int]) -> Recording:
    rec = Recording()
    names = {m: n for n, m in model.named_modules()}

    def hook(m, _inp, out):
        if isinstance(out, torch.Tensor) and out.ndim == 4:
            rec.out_channels[m] = out.shape[1]
            if isinstance(m, nn.Conv2d):
                rec.conv_hw.setdefault(names[m], []).append(out.shape[2] * out.shape[3])

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        p = next(model.parameters())
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, 3, *size, dtype=p.dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
    return rec
