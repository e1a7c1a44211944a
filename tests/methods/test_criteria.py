"""The criteria a method opts into, against independent computations: folded norms, Taylor's moving average with
bias correction and its state, similarity to the group's other filters."""

import numpy as np
import pytest
import torch

from yolo_prune.graph.analyze import analyze
from yolo_prune.methods.criteria import TAYLOR_DECAY, FoldedL1, FoldedL2, Similarity, Taylor
from yolo_prune.nn.build import load_model


@pytest.fixture(scope="module")
def v8n():
    torch.manual_seed(0)
    model = load_model("yolov8n.yaml").eval()
    for m in model.modules():  # non-trivial BN statistics and scales
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1, 1)
    return model, analyze(model, 640)


def single_conv_group(graph):
    """A group with one member conv (its scores are that conv's alone, before normalising)."""
    return next(g for g in graph.groups if len(g.members) == 1 and g.width >= 16)


@pytest.mark.parametrize("criterion, norm", [(FoldedL1, lambda w: w.abs().sum(1)), (FoldedL2, lambda w: w.norm(dim=1))])
def test_folded_norms(v8n, criterion, norm):
    model, graph = v8n
    group = single_conv_group(graph)
    conv = dict(model.named_modules())[group.members[0]]
    site = next(s.site for s in graph.sites if s.site.name == group.members[0])
    bn = dict(model.named_modules())[site.norm_name]
    folded = conv.weight.flatten(1) * (bn.weight / torch.sqrt(bn.running_var + bn.eps))[:, None]
    expected = norm(folded).double().detach().numpy()
    got = criterion(graph)(model)[group.name]
    np.testing.assert_allclose(got, expected / expected.mean(), rtol=1e-5)


def test_taylor_moving_average_bias_correction_and_state(v8n):
    model, graph = v8n
    taylor = Taylor(graph)
    bns = {n: m for n, m in model.named_modules() if n in set(taylor.norms)}
    terms = []
    for step in range(3):
        for bn in bns.values():
            bn.weight.grad = torch.full_like(bn.weight, 0.1 * (step + 1))
            bn.bias.grad = torch.zeros_like(bn.bias)
        taylor.observe(model)
        name, bn = next(iter(bns.items()))
        terms.append(((bn.weight * bn.weight.grad).detach() ** 2).double().numpy())
    # bias-corrected exponential average of the three terms
    weights = [(1 - TAYLOR_DECAY) * TAYLOR_DECAY ** (2 - k) for k in range(3)]
    expected = sum(w * t for w, t in zip(weights, terms)) / (1 - TAYLOR_DECAY**3)
    np.testing.assert_allclose(taylor.average()[name], expected, rtol=1e-5)
    again = Taylor(graph)
    again.load_state_dict(taylor.state_dict())
    assert again.steps == 3
    for k, v in taylor.scores().items():
        np.testing.assert_array_equal(again.scores()[k], v)
    assert all((v >= 0).all() for v in taylor.scores().values())
    for bn in bns.values():
        bn.weight.grad = bn.bias.grad = None


def test_similarity_scores_the_redundant_majority_low(v8n):
    model, graph = v8n
    group = single_conv_group(graph)
    modules = dict(model.named_modules())
    conv = modules[group.members[0]]
    site = next(s.site for s in graph.sites if s.site.name == group.members[0])
    bn = modules[site.norm_name]
    copies = list(range(1, group.width - 4))
    with torch.no_grad():  # all but 4 channels become copies of channel 0: the median is that filter
        for c in copies:
            conv.weight[c] = conv.weight[0]
            bn.weight[c], bn.running_var[c] = bn.weight[0], bn.running_var[0]
    others = list(range(group.width - 4, group.width))
    for mode in ("median", "pairwise"):
        scores = Similarity(graph, mode=mode)(model)[group.name]
        assert scores.mean() == pytest.approx(1.0)
        assert scores[[0, *copies]].max() < scores[others].min(), mode
    median = Similarity(graph, mode="median")(model)[group.name]
    assert median[[0, *copies]].max() < 1e-3 * median[others].min()  # at the geometric median itself
    d = Similarity(graph).distances(model)[group.name]
    assert d[0, 1] == 0 and torch.allclose(d, d.T) and (d.diagonal() == 0).all()
