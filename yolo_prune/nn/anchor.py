"""Anchor-based YOLO heads in the Ultralytics model family: YOLOv5's Detect and YOLOv7's IDetect.

`AnchorDetectionModel` is an Ultralytics `DetectionModel` built from a YOLOv5/YOLOv7-style YAML (the kind with an
`anchors:` key). Its head decodes predictions the way YOLOv5/YOLOv7 do (sigmoid, xy*2-0.5 on the grid, (wh*2)^2 times
the anchor) and returns them in the layout Ultralytics' validator, predictor and exporter read: (B, 4+nc, N) with xywh
boxes in input pixels and per-class scores objectness*class. Training uses `AnchorLoss`, YOLOv5's anchor-matching
loss (CIoU box, objectness BCE, class BCE), for Detect and IDetect alike (YOLOv7 trains IDetect with a different
target assigner, OTA; this loss is the documented first step).

Why a parser of our own: Ultralytics' `parse_model` gives a module it does not know `ch[f]` as its output width and
passes its YAML arguments unchanged, so a head reading several layers (f is a list) cannot even be constructed, and
YOLOv7 rows (RepConv, MP, SP, SPPCSPC, per-row activations) would get wrong arguments. `parse_anchor_model` reads the
YOLOv5/YOLOv7 vocabulary, maps it onto Ultralytics' stock modules where they are identical (Conv, C3, Bottleneck,
SPPF, SPP, Focus, Concat, RepConv, nn.MaxPool2d for MP/SP), and lays the layers out exactly as `parse_model` does
(`.i`, `.f`, `.type`, `.np`, save list), so everything that walks an Ultralytics model works unchanged.
"""

from __future__ import annotations

import ast
import math
from copy import deepcopy

import torch
from torch import nn
from ultralytics.nn.modules import C3, SPP, SPPF, Bottleneck, Concat, Conv, Focus, RepConv
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.metrics import bbox_iou
from ultralytics.utils.ops import make_divisible
from ultralytics.utils.torch_utils import initialize_weights

from ..errors import YoloPruneError
from .register import add_module

HEAD_NAMES = ("Detect", "AnchorDetect", "IDetect")  # head names an anchor YAML may use (Detect = YOLOv5's)


@add_module
class ImplicitA(nn.Module):
    """YOLOR implicit addition: a learned per-channel constant added to the input of a head conv."""

    def __init__(self, channels: int, mean: float = 0.0, std: float = 0.02):
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, channels, 1, 1))
        nn.init.normal_(self.implicit, mean=mean, std=std)

    def forward(self, x):
        return x + self.implicit


@add_module
class ImplicitM(nn.Module):
    """YOLOR implicit multiplication: a learned per-channel gain on the output of a head conv."""

    def __init__(self, channels: int, mean: float = 1.0, std: float = 0.02):
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, channels, 1, 1))
        nn.init.normal_(self.implicit, mean=mean, std=std)

    def forward(self, x):
        return x * self.implicit


@add_module
class AnchorDetect(nn.Module):
    """YOLOv5 Detect: one 1x1 conv per level with na*(5+nc) outputs, decoded against anchors.

    Args:
        nc: number of classes.
        anchors: per level, a flat list of anchor (w, h) pairs in input pixels.
        ch: input channels per level.

    `anchors` (a buffer, as in YOLOv5's state dict) holds the anchors in grid units of their level once the model has
    measured the strides; `stride` (a non-persistent buffer) the stride of each level.
    """

    export = False  # return only the decoded tensor (ONNX/TensorRT); tracing sets the same behaviour by itself
    end2end = False  # needs NMS (read by Ultralytics' validator and predictor)
    max_det = 300  # set by Ultralytics' trainer on every head; only NMS uses it here

    def __init__(self, nc: int = 80, anchors=(), ch=()):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, self.na, 2))
        self.register_buffer("stride", torch.zeros(self.nl), persistent=False)
        self.m = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in ch)

    def head_conv(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Level i's prediction conv: (bs, c_i, ny, nx) -> (bs, na*(5+nc), ny, nx)."""
        return self.m[i](x)

    def level(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Raw prediction map of level i as (bs, na, ny, nx, 5+nc), before any sigmoid."""
        p = self.head_conv(i, x)
        bs, _, ny, nx = p.shape
        return p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()

    def forward(self, xs: list[torch.Tensor]):
        raw = [self.level(i, x) for i, x in enumerate(xs)]
        if self.training:
            return raw
        y = torch.cat([self.decode(i, p) for i, p in enumerate(raw)], 2)
        return y if self.export or _exporting() else (y, raw)

    def decode(self, i: int, p: torch.Tensor) -> torch.Tensor:
        """(bs, na, ny, nx, 5+nc) raw map -> (bs, 4+nc, na*ny*nx): xywh in input pixels, objectness*class."""
        bs, _, ny, nx, _ = p.shape
        ys, xs = torch.meshgrid(
            torch.arange(ny, device=p.device, dtype=p.dtype),
            torch.arange(nx, device=p.device, dtype=p.dtype),
            indexing="ij",
        )
        grid = torch.stack((xs, ys), -1).view(1, 1, ny, nx, 2)
        anchor = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2).to(p.dtype)
        s = p.sigmoid()
        xy = (s[..., :2] * 2 - 0.5 + grid) * self.stride[i]
        wh = (s[..., 2:4] * 2) ** 2 * anchor
        scores = s[..., 5:] * s[..., 4:5]
        return torch.cat((xy, wh, scores), -1).view(bs, -1, 4 + self.nc).transpose(1, 2)

    def bias_init(self):
        """YOLOv5's prior: about 8 objects per 640x640 image, classes equally likely (RetinaNet section 3.3)."""
        for conv, s in zip(self.m, self.stride.tolist()):
            b = conv.bias.data.view(self.na, self.no)
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            b[:, 5:] += math.log(0.6 / (self.nc - 0.99)) if self.nc > 1 else 0.0


@add_module
class IDetect(AnchorDetect):
    """YOLOv7 IDetect: Detect with an ImplicitA before and an ImplicitM after each level's conv."""

    def __init__(self, nc: int = 80, anchors=(), ch=()):
        super().__init__(nc, anchors, ch)
        self.ia = nn.ModuleList(ImplicitA(c) for c in ch)
        self.im = nn.ModuleList(ImplicitM(self.na * self.no) for _ in ch)

    def head_conv(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.im[i](self.m[i](self.ia[i](x)))

    @torch.no_grad()
    def fuse(self):
        """Fold the implicit terms into the convs (exact): W(x + a) * m + b*m = (m*W) x + m*(W a + b)."""
        for i, conv in enumerate(self.m):
            if isinstance(self.ia[i], nn.Identity):
                continue
            conv.bias += conv.weight.flatten(1) @ self.ia[i].implicit.flatten()
            gain = self.im[i].implicit.view(-1)
            conv.weight.mul_(gain.view(-1, 1, 1, 1))
            conv.bias.mul_(gain)
            self.ia[i], self.im[i] = nn.Identity(), nn.Identity()


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def implicit_a_feeds(model: nn.Module) -> dict[str, str]:
    """For every IDetect ImplicitA, the qualified name of the conv whose input it shifts: {implicit: conv}.

    Slimming must cut an ImplicitA with the kept *input* channels of that conv, after folding the removed channels'
    constants into the conv bias: `fold_pruned_implicit_a` does both.
    """
    feeds = {}
    for name, m in model.named_modules():
        if isinstance(m, IDetect):
            for i, ia in enumerate(m.ia):
                if isinstance(ia, ImplicitA):
                    feeds[f"{name}.ia.{i}"] = f"{name}.m.{i}"
    return feeds


@torch.no_grad()
def fold_pruned_implicit_a(model: nn.Module, keep: dict) -> None:
    """Slim every IDetect ImplicitA to the kept input channels of its conv; call BEFORE the convs are cut.

    A masked channel reaches the conv as its ImplicitA constant a_c (not 0), so the slim model stays exact only if
    the conv's bias absorbs W[:, c] * a_c for every removed channel c; that needs the conv's uncut weight.

    Args:
        model: the model about to be slimmed (modified in place).
        keep: conv name -> (kept output indices, kept input indices), as `ChannelGraph.keep_indices` returns.
    """
    for ia_name, conv_name in implicit_a_feeds(model).items():
        if conv_name not in keep:
            continue
        ia, conv = model.get_submodule(ia_name), model.get_submodule(conv_name)
        width = ia.implicit.shape[1]
        kept = torch.as_tensor(keep[conv_name][1], dtype=torch.long, device=conv.weight.device)
        if len(kept) == width:
            continue
        if conv.in_channels != width:
            raise RuntimeError(f"{conv_name} is already cut; fold its ImplicitA before cutting the convs")
        removed = torch.ones(width, dtype=torch.bool, device=kept.device)
        removed[kept] = False
        conv.bias += conv.weight[:, removed, 0, 0] @ ia.implicit[0, removed, 0, 0]
        ia.implicit = nn.Parameter(ia.implicit.data[:, kept].contiguous(), requires_grad=ia.implicit.requires_grad)


# -- model ------------------------------------------------------------------------------------------------------------
def is_anchor_yaml(d: dict) -> bool:
    """True for a YOLOv5/YOLOv7-style model dict: it has `anchors` and ends with Detect/AnchorDetect/IDetect."""
    head = (d.get("head") or [[None, None, None]])[-1]
    return "anchors" in d and head[2] in HEAD_NAMES


class AnchorDetectionModel(DetectionModel):
    """An Ultralytics DetectionModel whose head is AnchorDetect or IDetect, built from a YOLOv5/YOLOv7 YAML.

    Args:
        cfg: model YAML path or dict (with `anchors`, `nc`, `depth_multiple`, `width_multiple`, `backbone`, `head`).
        ch: input channels.
        nc: number of classes (overrides the YAML's).
        verbose: print the layer table.
    """

    def __init__(self, cfg="yolov7-tiny-idetect.yaml", ch: int = 3, nc: int | None = None, verbose: bool = True):
        nn.Module.__init__(self)  # DetectionModel.__init__ would run Ultralytics' parse_model (see module docstring)
        self.yaml = deepcopy(cfg) if isinstance(cfg, dict) else _load_yaml(cfg)
        self.yaml["channels"] = ch
        if nc and nc != self.yaml["nc"]:
            self.yaml["nc"] = nc
        self.model, self.save = parse_anchor_model(deepcopy(self.yaml), ch, verbose)
        if not isinstance(self.model[-1], AnchorDetect):
            raise YoloPruneError("The last layer of an anchor model YAML must be its Detect/IDetect head.")
        self.names = {i: f"{i}" for i in range(self.yaml["nc"])}
        self.inplace = self.yaml.get("inplace", True)
        self.stride = self._measure_strides(ch)
        self.model[-1].bias_init()
        initialize_weights(self)
        if verbose:
            self.info()

    @torch.no_grad()
    def _measure_strides(self, ch: int) -> torch.Tensor:
        """Strides from one forward at 256 px; anchors go to grid units, in the order of the strides (as YOLOv5)."""
        head = self.model[-1]
        self.model.eval()  # keep BN statistics untouched
        head.train()  # raw maps out
        raw = self._predict_once(torch.zeros(1, ch, 256, 256))
        self.model.train()
        head.stride.copy_(torch.tensor([256 / p.shape[2] for p in raw]))
        area = head.anchors.prod(-1).mean(-1)
        d_area, d_stride = area[-1] - area[0], head.stride[-1] - head.stride[0]
        if d_area != 0 and d_area.sign() != d_stride.sign():
            head.anchors.copy_(head.anchors.flip(0))  # anchors listed large-to-small: YOLOv5 reverses them
        head.anchors /= head.stride.view(-1, 1, 1)
        return head.stride.clone()

    def init_criterion(self):
        return AnchorLoss(self)

    def fuse(self, verbose: bool = True, imgsz: int = 640):
        head = self.model[-1]
        if isinstance(head, IDetect):
            head.fuse()
        return super().fuse(verbose=verbose, imgsz=imgsz)


def _load_yaml(cfg) -> dict:
    from ultralytics.utils import YAML

    from .build import config_path

    path = config_path(str(cfg)) or cfg
    try:
        d = YAML.load(path)
    except (FileNotFoundError, OSError) as e:
        raise YoloPruneError(f"Cannot read model YAML '{cfg}': {e}") from None
    d["yaml_file"] = str(path)
    return d


# -- YAML parsing -----------------------------------------------------------------------------------------------------
def parse_anchor_model(d: dict, ch: int, verbose: bool = False) -> tuple[nn.Sequential, list[int]]:
    """Build the layers of a YOLOv5/YOLOv7 model dict, laid out as Ultralytics' parse_model lays them out."""
    from ultralytics.utils import LOGGER

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


def activation(spec) -> nn.Module:
    """A torch activation from a YAML spec such as `nn.LeakyReLU(0.1)` (parsed, never evaluated) or a module."""
    if isinstance(spec, nn.Module):
        return spec
    try:
        call = ast.parse(str(spec).strip(), mode="eval").body
        assert isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
        owner = ast.unparse(call.func.value)
        assert owner in ("nn", "torch.nn")
        cls = getattr(nn, call.func.attr)
        assert isinstance(cls, type) and cls.__module__ in ("torch.nn.modules.activation", "torch.nn.modules.linear")
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        return cls(*args, **kwargs)
    except (AssertionError, AttributeError, SyntaxError, TypeError, ValueError):
        raise YoloPruneError(
            f"Activation '{spec}' in the model YAML is not a torch activation call such as nn.LeakyReLU(0.1)."
        ) from None


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
    from .modules import SPPCSPC

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


# -- loss -------------------------------------------------------------------------------------------------------------
def _arg(args, key, default):
    return args.get(key, default) if isinstance(args, dict) else getattr(args, key, default)


class AnchorLoss:
    """YOLOv5's loss for anchor heads: CIoU box loss and class BCE on matched anchors, objectness BCE everywhere.

    Targets are matched to every anchor whose w/h ratio to the box is within `anchor_t` (4.0), in the box's own cell
    and the two neighbour cells nearest to its centre. Gains are YOLOv5's (box 0.05, obj 1.0, cls 0.5, scaled by the
    number of levels, classes and image size as YOLOv5 scales them); Ultralytics' `box` and `cls` train arguments
    scale them relative to their defaults (7.5 and 0.5), so default arguments give exactly YOLOv5's loss.

    Called as `loss(preds, batch)` with the Ultralytics trainer's batch; returns (sum * batch size, detached items).
    """

    anchor_t = 4.0
    balance = {3: [4.0, 1.0, 0.4]}  # objectness weight per level (P3-P5); other level counts use YOLOv5's P3-P7 list
    offsets = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32) * 0.5

    def __init__(self, model: AnchorDetectionModel):
        self.head = model.model[-1]
        self.nl, self.na, self.nc = self.head.nl, self.head.na, self.head.nc
        args = getattr(model, "args", {})
        imgsz = _arg(args, "imgsz", 640)
        imgsz = max(imgsz) if isinstance(imgsz, (list, tuple)) else imgsz
        levels = 3 / self.nl
        self.box_gain = 0.05 * _arg(args, "box", 7.5) / 7.5 * levels
        self.cls_gain = 0.5 * _arg(args, "cls", 0.5) / 0.5 * self.nc / 80 * levels
        self.obj_gain = 1.0 * (imgsz / 640) ** 2 * levels
        self.level_weights = self.balance.get(self.nl, [4.0, 1.0, 0.25, 0.06, 0.02])
        self.bce = nn.BCEWithLogitsLoss()

    def __call__(self, preds, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raw = preds[1] if isinstance(preds, tuple) else preds
        device = raw[0].device
        targets = torch.cat(
            (batch["batch_idx"].view(-1, 1), batch["cls"].view(-1, 1), batch["bboxes"].view(-1, 4)), 1
        ).to(device, torch.float32)
        lbox, lobj, lcls = (torch.zeros((), device=device) for _ in range(3))
        for i, p in enumerate(raw):
            b, a, gj, gi, tbox, tcls, anchors = self.match(i, p, targets)
            tobj = torch.zeros(p.shape[:4], dtype=p.dtype, device=device)
            if len(b):
                pxy, pwh, _, pcls = p[b, a, gj, gi].float().split((2, 2, 1, self.nc), 1)
                box = torch.cat((pxy.sigmoid() * 2 - 0.5, (pwh.sigmoid() * 2) ** 2 * anchors), 1)
                iou = bbox_iou(box, tbox, xywh=True, CIoU=True).squeeze(-1)
                lbox = lbox + (1.0 - iou).mean()
                tobj[b, a, gj, gi] = iou.detach().clamp(0).to(tobj.dtype)  # objectness target: the IoU
                if self.nc > 1:
                    t = torch.zeros_like(pcls)
                    t[torch.arange(len(b), device=device), tcls] = 1.0
                    lcls = lcls + self.bce(pcls, t)
            lobj = lobj + self.bce(p[..., 4].float(), tobj.float()) * self.level_weights[i]
        lbox, lobj, lcls = lbox * self.box_gain, lobj * self.obj_gain, lcls * self.cls_gain
        bs = raw[0].shape[0]
        items = {"box_loss": lbox.detach(), "obj_loss": lobj.detach(), "cls_loss": lcls.detach()}
        return (lbox + lobj + lcls) * bs, items

    def match(self, i: int, p: torch.Tensor, targets: torch.Tensor):
        """Anchor and cell assignment on level i for targets (n, 6: image, class, x, y, w, h normalised).

        Returns image, anchor, row and column indices of each assignment, its box (xy offset in the cell, wh in grid
        units), its class and its anchor (grid units).
        """
        ny, nx = p.shape[2:4]
        anchors = self.head.anchors[i].to(p.device, torch.float32)
        scale = torch.tensor([nx, ny, nx, ny], device=p.device, dtype=torch.float32)
        t = targets[:, 2:6] * scale  # grid units
        n = len(targets)
        ai = torch.arange(self.na, device=p.device).repeat_interleave(n)  # anchor of each (anchor, target) pair
        t, meta = t.repeat(self.na, 1), targets[:, :2].repeat(self.na, 1)
        ratio = t[:, 2:4] / anchors[ai]
        keep = torch.max(ratio, 1 / ratio).max(1).values < self.anchor_t
        t, meta, ai = t[keep], meta[keep], ai[keep]
        # the centre's own cell, plus the horizontal and vertical neighbours it is nearest to (not past the border)
        gxy, gxy_inv = t[:, :2], scale[:2] - t[:, :2]
        left, up = ((gxy % 1 < 0.5) & (gxy > 1)).T
        right, down = ((gxy_inv % 1 < 0.5) & (gxy_inv > 1)).T
        use = torch.stack((torch.ones_like(left), left, up, right, down))  # (5, m), in the order of `offsets`
        off = self.offsets.to(p.device)[:, None].expand(5, len(t), 2)[use]
        t, meta, ai = t.repeat(5, 1, 1)[use], meta.repeat(5, 1, 1)[use], ai.repeat(5, 1)[use]
        cell = (t[:, :2] - off).long()
        gi, gj = cell[:, 0].clamp(0, nx - 1), cell[:, 1].clamp(0, ny - 1)
        tbox = torch.cat((t[:, :2] - torch.stack((gi, gj), 1), t[:, 2:4]), 1)
        return meta[:, 0].long(), ai, gj, gi, tbox, meta[:, 1].long(), anchors[ai]
