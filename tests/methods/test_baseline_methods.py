"""ASFP's adaptive widths, and the uniform / random baselines, on a detector built from YAML (no training)."""

import numpy as np
import pytest
import torch

from yolo_prune.graph.analyze import analyze
from yolo_prune.masks.budget import Budget
from yolo_prune.masks.mask import MaskSet
from yolo_prune.methods import PruneContext, get_method
from yolo_prune.nn.build import load_model


@pytest.fixture(scope="module")
def v8n():
    model = load_model("yolov8n.yaml")
    graph = analyze(model, 640)
    return model, graph, Budget(graph)


def taylor_like(graph, seed=0):
    """Per-BN sensitivities, heavy-tailed like real Taylor terms."""
    rng = np.random.default_rng(seed)
    return {s.site.norm_name: rng.lognormal(0, 1.5, len(s.out_comp)) for s in graph.sites if s.site.norm_name}


def measured(method, sensitivity):
    """Give a Taylor-scored method these averaged sensitivities, as if measured over many optimizer steps."""
    method.taylor.load_state_dict({"terms": {k: torch.from_numpy(v) for k, v in sensitivity.items()}, "steps": 10**6})


def step(method, model, masks, target, progress=1.0):
    ctx = PruneContext.one_shot(model, method.graph, method.budget, target, masks=masks)
    ctx.progress = progress
    return method.prune_step(ctx)


def test_asfp_shrinks_a_redundant_layer_more_and_moves_with_the_fewest_changes(v8n):
    model, graph, budget = v8n
    asfp = get_method("asfp")(graph, budget)
    sensitivity = taylor_like(graph)
    quiet = graph.groups[20]  # make one group's channels a hundred times less important than the rest
    for s in graph.sites:
        if s.site.name in quiet.members:
            sensitivity[s.site.norm_name] = sensitivity[s.site.norm_name] / 100
    measured(asfp, sensitivity)
    base = graph.gflops()
    first = step(asfp, model, MaskSet(graph), base * 0.85, 0.5)
    kept = {g.name: first.masks[g.name].mean() for g in graph.groups}
    assert kept[quiet.name] < np.median(list(kept.values())) - 0.2  # redundancy is judged across the network
    measured(asfp, taylor_like(graph, seed=1))  # new scores: some groups want to grow back, others to shrink
    second = step(asfp, model, first, base * 0.75, 1.0)
    assert second.gflops() == pytest.approx(base * 0.75, abs=0.003 * base)
    grew = 0
    for g in graph.groups:  # a group only sheds channels or only regrows them: no swaps at the same width
        old, new = first.masks[g.name], second.masks[g.name]
        assert not (old & ~new).any() or not (new & ~old).any(), g.name
        grew += int((new & ~old).any())
    assert grew > 0


def test_asfp_steps_no_further_than_its_target_when_a_whole_group_is_redundant(v8n):
    """A proposed width alive * (1 - rho) sits at the floor for any scale once rho = 1, so scaling widths overshot a
    small step; scaling the removal of redundant channels stops where the target is."""
    model, graph, budget = v8n
    asfp = get_method("asfp")(graph, budget)
    base = graph.gflops()

    def saving(g):  # FLOPs given up by cutting the group to its floor
        return budget.cost.external(budget.group_cost(g.gid, g.width) - budget.group_cost(g.gid, budget.floors[g.gid]))

    quiet = max(graph.groups, key=saving)
    sensitivity = taylor_like(graph)
    for s in graph.sites:
        if s.site.name in quiet.members:
            sensitivity[s.site.norm_name] = sensitivity[s.site.norm_name] / 100
    measured(asfp, sensitivity)
    target = base - 0.3 * saving(quiet)
    masks = step(asfp, model, MaskSet(graph), target)
    assert masks.gflops() == pytest.approx(target, abs=0.003 * base)
    assert masks.masks[quiet.name].sum() < quiet.width  # the redundant group is where the step cuts


def test_uniform_removes_about_the_same_share_everywhere(v8n):
    model, graph, budget = v8n
    masks = step(get_method("uniform")(graph, budget), model, MaskSet(graph), graph.gflops() * 0.63)
    assert masks.gflops() == pytest.approx(graph.gflops() * 0.63, abs=0.003 * graph.gflops())
    shares = np.array([masks.masks[g.name].mean() for g in graph.groups if g.width >= 64])
    assert shares.max() - shares.min() <= 0.25  # alignment to 8 and the exact FLOPs trim move a few chunks only
    l1 = step(get_method("l1")(graph, budget), model, MaskSet(graph), graph.gflops() * 0.63)
    l1_shares = np.array([l1.masks[g.name].mean() for g in graph.groups if g.width >= 64])
    assert l1_shares.max() - l1_shares.min() > shares.max() - shares.min()


def test_random_depends_on_its_seed_only(v8n):
    model, graph, budget = v8n
    method = get_method("random")

    def draw(seed):
        return step(method(graph, budget, {"random_seed": seed}), model, MaskSet(graph), graph.gflops() * 0.7).masks

    a, b, c = draw(0), draw(0), draw(1)
    assert all((a[k] == b[k]).all() for k in a) and any((a[k] != c[k]).any() for k in a)


def test_uniform_in_training_continues_from_the_current_masks(v8n):
    model, graph, budget = v8n
    method = get_method("uniform")(graph, budget)
    first = step(method, model, MaskSet(graph), graph.gflops() * 0.8, 0.5)
    shuffled = load_model("yolov8n.yaml")  # other weights: the folded-L1 ranking changes
    torch.manual_seed(1)
    for p in shuffled.parameters():
        p.data.normal_()
    second = step(method, shuffled, first, graph.gflops() * 0.6, 1.0)
    assert second.gflops() == pytest.approx(graph.gflops() * 0.6, abs=0.003 * graph.gflops())
    assert not any((second.masks[k] & ~first.masks[k]).any() for k in first.masks)  # nothing regrown or swapped
