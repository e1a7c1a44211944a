"""Compensation of masked channels (train/compensate.py) on the real COCO YOLOv5n and real images."""

import numpy as np
import pytest
import torch
from PIL import Image

from yolo_prune.graph.analyze import analyze
from yolo_prune.masks.budget import Budget
from yolo_prune.masks.mask import MaskSet
from yolo_prune.methods.criteria import folded_l1
from yolo_prune.nn.build import load_model
from yolo_prune.train.compensate import Compensation


def images(paths, size=256):
    arrays = [np.array(Image.open(p).convert("RGB").resize((size, size))) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def setup(yolov5n_coco, coco128):
    files = sorted((coco128 / "images" / "train2017").glob("*.jpg"))
    model = load_model(yolov5n_coco).float().eval()
    graph = analyze(model, 640)
    masks = Budget(graph).allocate(folded_l1(model, graph), graph.gflops() * 0.95)  # one small pruning step
    return yolov5n_coco, graph, masks, images(files[:12]), images(files[-6:])


def outputs(model, x):
    with torch.no_grad():
        return model(x)[0]


def test_compensation_cuts_the_output_change_of_a_pruning_step(setup):
    path, graph, masks, fit, held_out = setup
    dense = outputs(load_model(path).float().eval(), held_out)
    errors = {}
    for compensate in (False, True):
        model = load_model(path).float().eval()
        if compensate:
            comp = Compensation(graph)
            stats = comp.statistics(model, fit)
            done = comp.step([model], stats, graph.alive_components({}), graph.alive_components(masks))
            assert done > 0
        MaskSet(graph, masks).apply(model)
        errors[compensate] = float(((outputs(model, held_out) - dense) ** 2).mean() / (dense**2).mean())
    # fitted on other images than it is judged on: the kept channels really carry the masked ones' share
    assert errors[True] < 0.6 * errors[False], errors


def test_regrowing_undoes_the_compensation(setup):
    path, graph, masks, fit, _ = setup
    model = load_model(path).float().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    comp = Compensation(graph)
    full, pruned = graph.alive_components({}), graph.alive_components(masks)
    comp.step([model], comp.statistics(model, fit), full, pruned)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("conv.weight") for k in changed) and any(k.endswith("running_mean") for k in changed)
    restored = Compensation(graph)
    restored.load_state_dict(comp.state_dict())  # the rows survive a resume
    restored.step([model], {}, pruned, full)  # every channel regrown: no new fit, the old one subtracted
    for k, v in model.state_dict().items():
        assert torch.allclose(v.float(), before[k].float(), atol=1e-5), k
    assert not any(restored.rows.values())

