"""`AnchorDetectionModel`: an Ultralytics `DetectionModel` built from a YOLOv5/YOLOv7 YAML (one with `anchors:`).

Its head is AnchorDetect or IDetect (heads.py), its layers come from `parse_anchor_model` (parse.py), and it trains
with `AnchorLoss` (loss.py), YOLOv5's anchor-matching loss, for Detect and IDetect alike (YOLOv7 trains IDetect with a
different target assigner, OTA; this loss is the documented first step).
"""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import initialize_weights

from ...errors import YoloPruneError
from ..cfg import read_model_yaml
from .heads import AnchorDetect, IDetect
from .loss import AnchorLoss
from .parse import parse_anchor_model


class AnchorDetectionModel(DetectionModel):
    """An Ultralytics DetectionModel whose head is AnchorDetect or IDetect, built from a YOLOv5/YOLOv7 YAML.

    Args:
        cfg: model YAML path or dict (with `anchors`, `nc`, `depth_multiple`, `width_multiple`, `backbone`, `head`).
        ch: input channels.
        nc: number of classes (overrides the YAML's).
        verbose: print the layer table.
    """

    def __init__(self, cfg="yolov7-tiny-idetect.yaml", ch: int = 3, nc: int | None = None, verbose: bool = True):
        nn.Module.__init__(self)  # DetectionModel.__init__ would run Ultralytics' parse_model (see parse.py)
        self.yaml = deepcopy(cfg) if isinstance(cfg, dict) else read_model_yaml(cfg)
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

