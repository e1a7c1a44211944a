"""Slim model output == masked model output, for every target model, on real images."""

import copy

import cv2
import numpy as np
import pytest
import torch

from tests.graph.test_analyze import random_masks
from tests.models import ALL_MODELS, randomize
from yolo_prune.graph.analyze import analyze
from yolo_prune.masks.mask import MaskSet
from yolo_prune.nn.build import load_model
from yolo_prune.slim.slim import slim


def images(paths, size=320):
    batch = [cv2.resize(cv2.imread(str(p))[:, :, ::-1], (size, size)) for p in paths]
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).double() / 255


def flat(out):
    """Detect's eval output: decoded detections plus raw head outputs (not "feats", the narrower head inputs)."""
    parts = out if isinstance(out, (list, tuple)) else [out]
    tensors = []
    for p in parts:
        if isinstance(p, torch.Tensor):
            tensors.append(p.flatten())
        elif isinstance(p, dict):
            tensors += [flat(v) for k, v in p.items() if k != "feats"]
        elif isinstance(p, (list, tuple)):
            tensors.append(flat(p))
    return torch.cat(tensors)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_slim_equals_masked(name, coco8_images):
    model = load_model(name).double()
    randomize(model)
    graph = analyze(model)
    x = images(coco8_images[:2])
    for keep_frac in (0.7, 0.4):  # remove about 30 % and about 60 % of each group
        masks = random_masks(graph, keep_frac, seed=int(keep_frac * 10))
        masked = MaskSet(graph, masks).apply(copy.deepcopy(model)).eval()
        slimmed = slim(model, graph, masks).eval()
        assert sum(p.numel() for p in slimmed.parameters()) < sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            a, b = flat(masked(x)), flat(slimmed(x))
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < 1e-4, f"{name} keep {keep_frac}"


def test_masked_channels_are_exactly_zero_after_bn_and_act(coco8_images):
    model = load_model("yolov8n.yaml")
    randomize(model)
    graph = analyze(model)
    masks = random_masks(graph, 0.5)
    ms = MaskSet(graph, masks)
    ms.apply(model)
    conv = dict(model.named_modules())["model.4.cv1"]  # Conv -> BN -> SiLU
    seen = {}
    conv.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    for mode in ("train", "eval"):
        getattr(model, mode)()
        seen.clear()
        with torch.no_grad():
            model(images(coco8_images[:2]).float())
        dead = ~ms.norm_keep["model.4.cv1.bn"]
        assert dead.any() and seen["out"][:, dead].abs().max() == 0
        assert seen["out"][:, ~dead].abs().max() > 0
