"""Head damage (methods/damage.py) against the exact damage of masking single channels of the real COCO YOLOv5n."""

import numpy as np
import pytest
import torch
from PIL import Image

from yolo_prune.graph.analyze import analyze
from yolo_prune.masks.mask import MaskSet
from yolo_prune.methods.damage import HeadDamage, _isolated
from yolo_prune.nn.build import load_model

IMGSZ = 96


@pytest.fixture(scope="module")
def setting(yolov5n_official, coco8_images):
    model = load_model(yolov5n_official).float()
    images = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB").resize((IMGSZ, IMGSZ))))
                          for f in coco8_images[:2]]).permute(0, 3, 1, 2).float() / 255  # fmt: skip
    return model, analyze(model, IMGSZ), images


def _head_inputs(model, images):
    features = {}
    hook = model.model[-1].register_forward_pre_hook(lambda _m, a: features.update(enumerate(a[0])))
    with torch.no_grad(), _isolated(model):
        model(images)
    hook.remove()
    return [f.clone() for f in features.values()]


def _exact_damage(model, graph, images, dense, group, channel) -> float:
    """Distillation-unit change of the head inputs when one group channel is masked (BN scale and shift zeroed)."""
    masks = graph.full_masks()
    masks[group][channel] = False
    masked = MaskSet(graph, masks)
    saved = {n: (m.weight.detach().clone(), m.bias.detach().clone())
             for n, m in model.named_modules() if n in masked.norm_keep}  # fmt: skip
    masked.apply(model)
    changed = _head_inputs(model, images)
    with torch.no_grad():
        for n, m in model.named_modules():
            if n in saved:
                m.weight.copy_(saved[n][0])
                m.bias.copy_(saved[n][1])
    return sum(float((c - d).pow(2).sum() / (d.pow(2).mean() * d[0].numel())) for c, d in zip(changed, dense))


def _rank(x):
    return np.argsort(np.argsort(x))


def test_estimate_ranks_channels_like_their_exact_damage(setting):
    model, graph, images = setting
    damage = HeadDamage(graph, decay=0.0, projections=24)
    damage.observe(model, images, seed=0)
    scores = damage.scores()
    rng = np.random.default_rng(0)
    picks = [(g.name, int(rng.integers(g.width))) for g in rng.choice(graph.groups, 12, replace=False)]
    dense = _head_inputs(model, images)
    exact = np.array([_exact_damage(model, graph, images, dense, g, c) for g, c in picks])
    estimate = np.array([scores[g][c] for g, c in picks])
    rho = np.corrcoef(_rank(exact), _rank(estimate))[0, 1]
    assert rho > 0.8, (rho, list(zip(picks, exact, estimate)))


def test_observing_leaves_the_model_exactly_as_it_was(setting):
    model, graph, images = setting
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    HeadDamage(graph).observe(model, images, seed=1)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics included
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    model.eval()


def test_average_and_resume(setting):
    model, graph, images = setting
    a = HeadDamage(graph)
    a.observe(model, images, seed=2)
    b = HeadDamage(graph)
    b.load_state_dict(a.state_dict())
    assert all(np.array_equal(a.scores()[k], b.scores()[k]) for k in a.scores())
    a.observe(model, images, seed=3)
    b.observe(model, images, seed=3)
    assert all(np.allclose(a.scores()[k], b.scores()[k]) for k in a.scores())
