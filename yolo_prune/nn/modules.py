"""Extra nn modules used by yolo-prune configs, and the YAML support they need in Ultralytics' `parse_model`.

Importing this module makes our configs buildable by Ultralytics: it registers our classes (register.py) and extends
`parse_model` for *explicit-channel* rows. Ultralytics' parser only knows a fixed list of modules that take
`(c1, c2, ...)` like Conv; any other module is given its YAML args as they are and is assumed to keep its input width,
which is wrong for YOLOv7's SPPCSPC (1024 -> 512) and head RepConv (128 -> 256). For those rows we let the stock parser
build a 1x1 Conv placeholder with the row's output width (so width scaling and channel bookkeeping are Ultralytics'
own), then swap in the real module with the placeholder's channels and activation.

Unpickling a checkpoint that holds one of our classes imports this module, so a plain `from ultralytics import YOLO`
process can load and retrain it as long as yolo-prune is installed.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from ultralytics.nn.modules import Conv, RepConv

from ..errors import YoloPruneError
from . import register


@register.add_module
class SPPCSPC(nn.Module):
    """YOLOv7's spatial pyramid pooling in a CSP block (same sub-module names as the official one, for weight import).

    Main branch: 1x1 -> 3x3 -> 1x1, max-pools at three scales concatenated with their input, 1x1 -> 3x3. Beside it a
    1x1 shortcut; both are concatenated and mixed by a final 1x1.

    Args:
        c1: input channels.
        c2: output channels.
        e: hidden channels as a fraction of 2 * c2 (official default 0.5: hidden width equals c2).
        k: max-pool kernel sizes (stride 1, same padding).
    """

    def __init__(self, c1: int, c2: int, e: float = 0.5, k: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(c_, c_, 3, 1)
        self.cv4 = Conv(c_, c_, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)
        self.cv5 = Conv(4 * c_, c_, 1, 1)
        self.cv6 = Conv(c_, c_, 3, 1)
        self.cv7 = Conv(2 * c_, c2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        return self.cv7(torch.cat((y1, self.cv2(x)), 1))


# YAML rows `[from, 1, Name, [c2, *args]]` of these classes are built as Name(c1, c2, *args), like Conv
EXPLICIT_CHANNEL_MODULES: dict[str, type[nn.Module]] = {"RepConv": RepConv, "SPPCSPC": SPPCSPC}
_stock_parse_model = None  # Ultralytics' own parse_model, saved by _install()


def parse_model(d: dict, ch: int, verbose: bool = True):
    """Ultralytics' `parse_model`, plus explicit-channel rows (see the module docstring); other rows are untouched."""
    import ultralytics.nn.tasks as tasks

    rows = d["backbone"] + d["head"]
    swaps = {i: row for i, row in enumerate(rows) if row[2] in EXPLICIT_CHANNEL_MODULES}
    if not swaps:
        return _stock_parse_model(d, ch, verbose)
    for i, (_f, n, name, args) in swaps.items():
        if n != 1 or not args:
            raise YoloPruneError(f"Layer {i} ({name}) must be written [from, 1, {name}, [c2, ...]] (one repeat).")
    placeholder = [[row[0], 1, "Conv", [row[3][0]]] if i in swaps else row for i, row in enumerate(rows)]
    nb = len(d["backbone"])
    model, save = _stock_parse_model({**d, "backbone": placeholder[:nb], "head": placeholder[nb:]}, ch, verbose)
    for i, (_f, _n, name, args) in swaps.items():
        stub, cls = model[i], EXPLICIT_CHANNEL_MODULES[name]
        with _default_activation(stub.act, Conv, cls):  # the act the YAML gave this model (stock parse set it)
            layer = cls(stub.conv.in_channels, stub.conv.out_channels, *args[1:])
        layer.i, layer.f, layer.type = stub.i, stub.f, f"{cls.__module__}.{cls.__name__}"
        layer.np = sum(p.numel() for p in layer.parameters())
        model[i] = layer
        if verbose:
            tasks.LOGGER.info(f"{i:>3} is {name}{[stub.conv.in_channels, stub.conv.out_channels, *args[1:]]}, "
                              f"{layer.np} params (the Conv row above was its channel placeholder)")  # fmt: skip
    return model, save


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


def _install():
    """Register our classes and the parse_model extension in `ultralytics.nn.tasks` (idempotent)."""
    global _stock_parse_model
    import ultralytics.nn.tasks as tasks

    if tasks.parse_model is not parse_model:
        _stock_parse_model = tasks.parse_model
        tasks.parse_model = parse_model
    register.register_modules()


_install()
