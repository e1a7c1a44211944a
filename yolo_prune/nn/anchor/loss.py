"""`AnchorLoss`: YOLOv5's loss for anchor heads (CIoU box, objectness BCE, class BCE on matched anchors)."""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.utils.metrics import bbox_iou


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

    def __init__(self, model: nn.Module):
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
