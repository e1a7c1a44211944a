"""Shared test helpers: the target model lists, and random statistics that make exactness checks mean something."""

import torch
from torch import nn

ULTRALYTICS_MODELS = ["yolov5nu.yaml", "yolov8n.yaml", "yolov8s.yaml", "yolo11n.yaml", "yolo26n.yaml"]
YOLOV7_MODELS = ["yolov7-tiny.yaml", "yolov7.yaml", "yolov7-tiny-idetect.yaml"]  # the last: anchor-based IDetect
ALL_MODELS = ULTRALYTICS_MODELS + YOLOV7_MODELS


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics/affine terms and YOLOv7 implicit terms, so a wrongly kept or dropped channel shows."""
    from yolo_prune.nn.anchor import IDetect, ImplicitA

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = (torch.rand(n, generator=g) * 0.5 + 0.75).to(m.weight)
            m.bias.data = (torch.randn(n, generator=g) * 0.1).to(m.bias)
            m.running_mean = (torch.randn(n, generator=g) * 0.1).to(m.running_mean)
            m.running_var = (torch.rand(n, generator=g) + 0.5).to(m.running_var)
        elif isinstance(m, ImplicitA):
            m.implicit.data = (torch.randn(m.implicit.shape, generator=g) * 0.5).to(m.implicit)
        elif isinstance(m, IDetect):
            for im in m.im:
                im.implicit.data = (1 + torch.randn(im.implicit.shape, generator=g) * 0.2).to(im.implicit)
    return model
