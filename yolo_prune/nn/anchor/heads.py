"""Anchor-based YOLO heads: YOLOv5's Detect (`AnchorDetect`) and YOLOv7's IDetect, with YOLOR's implicit terms.

The head decodes predictions the way YOLOv5/YOLOv7 do (sigmoid, xy*2-0.5 on the grid, (wh*2)^2 times the anchor) and
returns them in the layout Ultralytics' validator, predictor and exporter read: (B, 4+nc, N) with xywh boxes in input
pixels and per-class scores objectness*class.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ImplicitA(nn.Module):
    """YOLOR implicit addition: a learned per-channel constant added to the input of a head conv."""

    def __init__(self, channels: int, mean: float = 0.0, std: float = 0.02):
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, channels, 1, 1))
        nn.init.normal_(self.implicit, mean=mean, std=std)

    def forward(self, x):
        return x + self.implicit


class ImplicitM(nn.Module):
    """YOLOR implicit multiplication: a learned per-channel gain on the output of a head conv."""

    def __init__(self, channels: int, mean: float = 1.0, std: float = 0.02):
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, channels, 1, 1))
        nn.init.normal_(self.implicit, mean=mean, std=std)

    def forward(self, x):
        return x * self.implicit


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

