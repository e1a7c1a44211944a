"""`parse_anchor_model`: the layers of a YOLOv5/YOLOv7 model YAML, laid out as Ultralytics' `parse_model` lays them.

Why a parser of our own: Ultralytics' `parse_model` gives a module it does not know `ch[f]` as its output width and
passes its YAML arguments unchanged, so a head reading several layers (f is a list) cannot even be constructed, and
YOLOv7 rows (RepConv, MP, SP, SPPCSPC, per-row activations) would get wrong arguments. This parser reads the
YOLOv5/YOLOv7 vocabulary, maps it onto Ultralytics' stock modules where they are identical (Conv, C3, Bottleneck,
SPPF, SPP, Focus, Concat, RepConv, nn.MaxPool2d for MP/SP), and lays the layers out exactly as `parse_model` does
(`.i`, `.f`, `.type`, `.np`, save list), so everything that walks an Ultralytics model works unchanged.
"""

from __future__ import annotations

import ast

from torch import nn
from ultralytics.nn.modules import C3, SPP, SPPF, Bottleneck, Concat, Conv, Focus, RepConv
from ultralytics.utils import LOGGER
from ultralytics.utils.ops import make_divisible

from ...errors import YoloPruneError
from ..cfg import HEAD_NAMES, activation
from ..modules import SPPCSPC
from .heads import AnchorDetect, IDetect


def parse_anchor_model(d: dict, ch: int, verbose: bool = False) -> tuple[nn.Sequential, list[int]]:
    """Build the layers of a YOLOv5/YOLOv7 model dict, laid out as Ultralytics' parse_model lays them out."""
    names = {"nc": d["nc"], "anchors": d["anchors"]}
    gd, gw = d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0)
    default_act = Conv.default_act
    if d.get("activation"):
        Conv.default_act = activation(d["activation"])
    try:
        widths, layers, save = [ch], [], []
        for i, (f, n, name, args) in enumerate(d["backbone"] + d["head"]):
            builder = _BUILDERS.get(name) or (_torch_layer if str(name).startswith("nn.") else None)
            if builder is None:
                raise YoloPruneError(
                    f"Layer {i} of the model YAML is a '{name}', which yolo-prune cannot build; supported: "
                    f"{', '.join(sorted(_BUILDERS))} and torch nn.* layers."
                )
            args = [_resolve(a, names) for a in args]
            n = max(round(n * gd), 1) if n > 1 else n
            c1 = [widths[j] for j in f] if isinstance(f, list) else widths[f]
            module, c2 = builder(name, c1, args, n, gw)
            module.i, module.f, module.type = i, f, f"{type(module).__module__}.{type(module).__name__}"
            module.np = sum(p.numel() for p in module.parameters())
            if verbose:
                LOGGER.info(f"{i:>3}{f!s:>20}{n:>3}{module.np:10.0f}  {name:<45}{args!s:<30}")
            save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
            layers.append(module)
            widths = [] if i == 0 else widths
            widths.append(c2)
    finally:
        Conv.default_act = default_act  # process-wide state
    return nn.Sequential(*layers), sorted(save)


def _resolve(a, names: dict):
    """A YAML argument: `nc`/`anchors` by name, literals parsed, anything else (e.g. 'nearest', an activation) kept."""
    if not isinstance(a, str):
        return a
    if a in names:
        return names[a]
    try:
        return ast.literal_eval(a)
    except (ValueError, SyntaxError):
        return a



def _act(a):
    return a if isinstance(a, bool) else activation(a)


def _width(c2: int, gw: float) -> int:
    return make_divisible(c2 * gw, 8)


def _fill(values, defaults) -> list:
    """Positional YAML arguments completed with the defaults of the missing trailing ones."""
    return list(values) + list(defaults[len(values) :])


def _repeat(make, n: int) -> nn.Module:
    return nn.Sequential(*(make() for _ in range(n))) if n > 1 else make()


def _conv(name, c1, args, n, gw):
    # YOLOv5 v7.0: Conv(c2, k, s, p, g, d, act); YOLOv5 <= 6.2 and YOLOv7: Conv(c2, k, s, p, g, act)
    c2 = _width(args[0], gw)
    k, s, p, g = _fill(args[1:5], (1, 1, None, 1))
    tail = list(args[5:])
    d = tail.pop(0) if tail and type(tail[0]) is int else 1
    act = _act(tail[0]) if tail else True
    return _repeat(lambda: Conv(c1, c2, k, s, p, g, d, act=act), n), c2


def _c3(name, c1, args, n, gw):
    c2 = _width(args[0], gw)
    return C3(c1, c2, n, *args[1:]), c2


def _bottleneck(name, c1, args, n, gw):
    c2 = _width(args[0], gw)
    shortcut, g, e = _fill(args[1:4], (True, 1, 0.5))  # YOLOv5's order
    return _repeat(lambda: Bottleneck(c1, c2, shortcut, g, k=(1, 3), e=e), n), c2


def _sppf(name, c1, args, n, gw):
    c2 = _width(args[0], gw)
    m = SPPF(c1, c2, *args[1:2])
    m.cv1.act = Conv.default_act  # YOLOv5's SPPF activates cv1 (Ultralytics' current default does not)
    return m, c2


def _spp(name, c1, args, n, gw):
    c2 = _width(args[0], gw)
    return SPP(c1, c2, *args[1:2]), c2


def _focus(name, c1, args, n, gw):
    c2 = _width(args[0], gw)
    rest = list(args[1:5])
    act = _act(args[5]) if len(args) > 5 else True
    return Focus(c1, c2, *rest, act=act), c2


def _repconv(name, c1, args, n, gw):
    c2 = _width(args[0], gw)
    k, s = _fill(args[1:3], (3, 1))
    g = args[4] if len(args) > 4 else 1
    act = _act(args[5]) if len(args) > 5 else True
    return RepConv(c1, c2, k, s, 1, g, act=act, bn=c1 == c2 and s == 1), c2  # YOLOv7's identity branch rule


def _sppcspc(name, c1, args, n, gw):
    c2 = _width(args[0], gw)
    _shortcut, _g, e, k = _fill(args[1:5], (False, 1, 0.5, (5, 9, 13)))  # YOLOv7's order; it ignores shortcut, g
    return SPPCSPC(c1, c2, e=e, k=tuple(k)), c2


def _mp(name, c1, args, n, gw):  # YOLOv7 MP(k=2): a k x k max-pool with stride k
    k = args[0] if args else 2
    return nn.MaxPool2d(k, k), c1


def _sp(name, c1, args, n, gw):  # YOLOv7 SP(k=3, s=1): a 'same' max-pool
    k, s = _fill(args[:2], (3, 1))
    return nn.MaxPool2d(k, s, k // 2), c1


def _concat(name, c1, args, n, gw):
    return Concat(*args), sum(c1)


def _head(name, c1, args, n, gw):
    nc, anchors = args[0], args[1]
    if isinstance(anchors, int):  # number of anchors only: placeholders until a checkpoint's anchors are copied in
        anchors = [list(range(anchors * 2))] * len(c1)
    return (IDetect if name == "IDetect" else AnchorDetect)(nc, anchors, c1), None


def _torch_layer(name, c1, args, n, gw):
    cls = getattr(nn, name[3:], None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise YoloPruneError(f"'{name}' in the model YAML is not a torch.nn layer.")
    return _repeat(lambda: cls(*args), n), c1


_BUILDERS = {
    "Conv": _conv,
    "C3": _c3,
    "Bottleneck": _bottleneck,
    "SPPF": _sppf,
    "SPP": _spp,
    "Focus": _focus,
    "RepConv": _repconv,
    "SPPCSPC": _sppcspc,
    "MP": _mp,
    "SP": _sp,
    "Concat": _concat,
    **dict.fromkeys(HEAD_NAMES, _head),
}

