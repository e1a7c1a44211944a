"""Explicit-channel YAML rows for Ultralytics' `parse_model`: `[from, 1, SPPCSPC, [c2, ...]]`, `[from, 1, RepConv, [c2,
k, s]]` built as Name(c1, c2, ...), like Conv.

Ultralytics' parser only knows a fixed list of modules that take `(c1, c2, ...)`; any other module is given its YAML
args as they are and is assumed to keep its input width, which is wrong for YOLOv7's SPPCSPC (1024 -> 512) and head
RepConv (128 -> 256), and it has no registry to extend that list. So `with_explicit_channels(parse_model)` wraps the
stock function: for those rows it lets the stock parser build a 1x1 Conv placeholder with the row's output width (so
width scaling and channel bookkeeping stay Ultralytics' own), then swaps in the real module with the placeholder's
channels and activation. A dict without such rows goes to the stock parser untouched. `install()` puts the wrapper in
`ultralytics.nn.tasks`; tests/nn/test_ultralytics_hooks.py pins the upstream behaviour that makes it necessary.
"""

from __future__ import annotations

import contextlib
import functools

from torch import nn
from ultralytics.nn.modules import Conv, RepConv
from ultralytics.utils import LOGGER

from ..errors import YoloPruneError
from .modules import SPPCSPC

# YAML rows `[from, 1, Name, [c2, *args]]` of these classes are built as Name(c1, c2, *args), like Conv
EXPLICIT_CHANNEL_MODULES: dict[str, type[nn.Module]] = {"RepConv": RepConv, "SPPCSPC": SPPCSPC}


def with_explicit_channels(stock_parse_model):
    """Ultralytics' `parse_model` plus explicit-channel rows; `.__wrapped__` is the stock function."""

    @functools.wraps(stock_parse_model)
    def parse_model(d: dict, ch: int, verbose: bool = True):
        rows = d["backbone"] + d["head"]
        swaps = {i: row for i, row in enumerate(rows) if row[2] in EXPLICIT_CHANNEL_MODULES}
        if not swaps:
            return stock_parse_model(d, ch, verbose)
        for i, (_f, n, name, args) in swaps.items():
            if n != 1 or not args:
                raise YoloPruneError(f"Layer {i} ({name}) must be written [from, 1, {name}, [c2, ...]] (one repeat).")
        placeholder = [[row[0], 1, "Conv", [row[3][0]]] if i in swaps else row for i, row in enumerate(rows)]
        nb = len(d["backbone"])
        model, save = stock_parse_model({**d, "backbone": placeholder[:nb], "head": placeholder[nb:]}, ch, verbose)
        for i, (_f, _n, name, args) in swaps.items():
            model[i] = _swap(model[i], EXPLICIT_CHANNEL_MODULES[name], args[1:], verbose)
        return model, save

    parse_model.yolo_prune_explicit_channels = True  # what install() looks for, to wrap only once
    return parse_model


def _swap(stub: Conv, cls: type[nn.Module], args: list, verbose: bool) -> nn.Module:
    """The real module for a placeholder Conv: same channels, activation and layer bookkeeping."""
    c1, c2 = stub.conv.in_channels, stub.conv.out_channels
    with _default_activation(stub.act, Conv, cls):  # the act the YAML gave this model (stock parse set it)
        layer = cls(c1, c2, *args)
    layer.i, layer.f, layer.type = stub.i, stub.f, f"{cls.__module__}.{cls.__name__}"
    layer.np = sum(p.numel() for p in layer.parameters())
    if verbose:
        LOGGER.info(f"{stub.i:>3} is {cls.__name__}{[c1, c2, *args]}, {layer.np} params (the Conv row above was its "
                    "channel placeholder)")  # fmt: skip
    return layer


@contextlib.contextmanager
def _default_activation(act: nn.Module, *classes: type):
    saved = [(c, c.__dict__["default_act"]) for c in classes if "default_act" in c.__dict__]
    try:
        for c, _ in saved:
            c.default_act = act
        yield
    finally:
        for c, old in saved:
            c.default_act = old
