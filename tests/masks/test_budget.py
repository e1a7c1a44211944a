"""The shared budget: floors, alignment (with a group's remainder dropped first), a `start` to continue from, the
tolerance band, and one clear error for an unreachable cut. On yolov8n's real channel graph, no training."""

import numpy as np
import pytest

from yolo_prune.errors import YoloPruneError
from yolo_prune.graph.analyze import analyze
from yolo_prune.masks.budget import Budget
from yolo_prune.masks.mask import MaskSet
from yolo_prune.nn.build import load_model


@pytest.fixture(scope="module")
def graph():
    return analyze(load_model("yolov8n.yaml"), 640)


def scores(graph, seed=0):
    rng = np.random.default_rng(seed)
    return {g.name: rng.random(g.width) for g in graph.groups}


def widths(masks):
    return {k: int(v.sum()) for k, v in masks.items()}


@pytest.mark.parametrize("round_to, min_keep", [(8, 0.25), (16, 0.5), (1, 0.0)])
def test_floors_hold_at_the_deepest_cut(graph, round_to, min_keep):
    budget = Budget(graph, round_to, min_keep)
    for g in graph.groups:
        floor = budget.floors[g.gid]
        assert floor == min(g.width, max(round_to, -(-min_keep * g.width // round_to) * round_to))
    deepest = budget.allocate(scores(graph), budget.min_gflops())
    assert all(int(deepest[g.name].sum()) == budget.floors[g.gid] for g in graph.groups)
    assert graph.gflops(deepest) == pytest.approx(budget.min_gflops())


def test_widths_are_aligned_and_a_remainder_goes_first(graph):
    budget = Budget(graph, round_to=24, min_keep=0.0)  # yolov8n's widths (16, 32, 64, ...) leave remainders of 24
    base = graph.gflops()
    masks = budget.allocate(scores(graph), base * 0.6)
    full = {g.name: g.width for g in graph.groups}
    for name, w in widths(masks).items():
        assert w == full[name] or (full[name] - w - full[name] % 24) % 24 == 0 and w % 24 == 0, (name, w)
    assert any(w < full[k] and full[k] % 24 for k, w in widths(masks).items())  # the remainder case was exercised


def test_the_target_lands_within_the_tolerance_below_it(graph):
    budget = Budget(graph)
    base = graph.gflops()
    for cut in (0.1, 0.3, 0.5):
        got = graph.gflops(budget.allocate(scores(graph), base * (1 - cut)))
        assert base * (1 - cut) - 0.002 * base <= got <= base * (1 - cut)


def test_start_keeps_its_removed_channels_removed(graph):
    budget = Budget(graph)
    base = graph.gflops()
    first = budget.allocate(scores(graph, 0), base * 0.8)
    second = budget.allocate(scores(graph, 1), base * 0.6, start=first)  # other scores: only continues from `first`
    assert all(not (second[k] & ~first[k]).any() for k in first)
    assert graph.gflops(second) <= base * 0.6
    again = budget.allocate(scores(graph, 2), base * 0.9, start=first)  # already below the target: start as it is
    assert all((again[k] == first[k]).all() for k in first) and again["model.0"] is not first["model.0"]
    lowest = scores(graph, 0)
    for k in first:  # within a group the lowest scores go first
        if (~first[k]).any() and first[k].any():
            assert lowest[k][~first[k]].max() <= lowest[k][first[k]].min()


def test_unreachable_cut_is_one_clear_error(graph):
    budget = Budget(graph, round_to=8, min_keep=0.5)
    reachable = 1 - budget.min_gflops() / graph.gflops()
    with pytest.raises(YoloPruneError, match=f"largest reachable cut is {reachable:.3f}"):
        budget.allocate(scores(graph), graph.gflops() * (1 - reachable - 0.05))


def test_mask_set_round_trip_and_exact_zeros(graph):
    model = load_model("yolov8n.yaml")
    masks = MaskSet(graph, Budget(graph).allocate(scores(graph), graph.gflops() * 0.7))
    again = MaskSet.from_state_dict(graph, masks.state_dict())
    assert all((again.masks[k] == masks.masks[k]).all() for k in masks.masks)
    masks.apply(model)
    modules = dict(model.named_modules())
    for name, keep in masks.norm_keep.items():
        assert modules[name].weight[~keep].abs().max() == 0 and modules[name].bias[~keep].abs().max() == 0
        assert modules[name].weight[keep].abs().min() > 0
