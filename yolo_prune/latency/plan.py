"""The plan of a latency table: every prunable conv site of a model as a spec (sitegraph.py) with the widths to time.

Each conv site of the channel graph becomes a spec with the widths its output can take on the measurement grid
(multiples of `step`) and at most CIN_POINTS of the widths its input can take; a side whose channels are all fixed
(the image, the head's outputs) is not varied. The plan is what `yolo-prune profile` measures (bench/profile.py),
what the Jetson kit measures from `--plan`, and what a table is checked against before it is used.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ..errors import YoloPruneError
from ..graph.analyze import ChannelGraph
from ..nn.modes import eval_mode
from .lut import FORMAT, VERSION

CIN_POINTS = 8  # widths measured on the input side (all grid widths on the output side)
ACTIVATIONS = {nn.SiLU: "silu", nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Identity: "identity",
               nn.Sigmoid: "sigmoid", nn.Hardswish: "hardswish"}  # fmt: skip


def plan_table(model: nn.Module, graph: ChannelGraph, imgsz: tuple[int, int], batch: int, step: int) -> dict:
    """The table without measurements: one entry per conv site, in the graph's site order."""
    if step < 1:
        raise YoloPruneError(f"--step must be a positive number of channels, got {step}.")
    in_hw = _input_sizes(model, imgsz)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    sites = []
    for s in graph.sites:
        k = calls[s.site.name] = calls.get(s.site.name, -1) + 1
        conv = modules[s.site.name]
        spec = _spec(s.site.name, k, conv, _activation(modules, s.site.name), in_hw[s.site.name][k], s.site.depthwise)
        spec["cout_widths"] = _axis(s.out_comp, step)
        spec["cin_widths"] = [] if s.site.depthwise else _thin(_axis(s.in_comp, step), CIN_POINTS)
        sites.append(spec)
    return {"format": FORMAT, "version": VERSION, "imgsz": list(imgsz), "batch": batch, "step": step, "sites": sites}


def _spec(name, call, conv: nn.Conv2d, act: dict, hw, depthwise) -> dict:
    if isinstance(conv.padding, str):
        raise YoloPruneError(f"{name} uses padding='{conv.padding}'; the latency table needs explicit padding.")
    return {"name": name, "call": call, "cin": conv.in_channels, "cout": conv.out_channels,
            "kernel": list(conv.kernel_size), "stride": list(conv.stride), "pad": list(conv.padding),
            "dilation": list(conv.dilation), "depthwise": depthwise, "in_hw": list(hw), "act": act}  # fmt: skip


def _axis(comps: np.ndarray, step: int) -> list[int]:
    """Widths one side of a site can take on the grid: multiples of `step` above its fixed channels, and full.
    Empty when every channel of that side is fixed (the side is never varied)."""
    full, fixed = len(comps), int((comps < 0).sum())
    if fixed == full:
        return []
    return sorted({full} | {w for w in range(step, full, step) if w >= max(fixed, 1)})


def _thin(widths: list[int], n: int) -> list[int]:
    """At most n of `widths`, evenly spread, the full (last) one kept: the input side is measured coarser, since the
    ladder (the staircase) is read on the output side, where a kernel's channel blocking lives."""
    if len(widths) <= n:
        return widths
    picks = np.linspace(0, len(widths) - 1, n).round().astype(int)
    return [widths[i] for i in sorted(set(picks.tolist()))]


def _activation(modules: dict, conv_name: str) -> dict:
    """The activation after the conv: its Ultralytics Conv's `act`, none for a bare conv."""
    parent = modules.get(conv_name.rsplit(".", 1)[0]) if conv_name.endswith(".conv") else None
    act = getattr(parent, "act", None) if parent is not None and getattr(parent, "conv", None) is not None else None
    if act is None or act is False or act is True:
        return {"op": "identity"}
    op = ACTIVATIONS.get(type(act))
    if op is None:
        raise YoloPruneError(f"{conv_name} is followed by {type(act).__name__}, which the latency table cannot "
                             f"build; supported: {', '.join(c.__name__ for c in ACTIVATIONS)}.")  # fmt: skip
    return {"op": op, "alpha": float(act.negative_slope)} if op == "leaky_relu" else {"op": op}


def _input_sizes(model: nn.Module, imgsz) -> dict[str, list[tuple[int, int]]]:
    """Input height and width of every conv call at the real image size (one forward pass)."""
    import torch

    sizes: dict[str, list[tuple[int, int]]] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(m, args):
        sizes.setdefault(names[m], []).append(tuple(args[0].shape[-2:]))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, 3, *imgsz, dtype=next(model.parameters()).dtype))
    finally:
        for h in handles:
            h.remove()
    return sizes
