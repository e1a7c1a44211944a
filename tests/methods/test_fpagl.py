"""FP-AGL (methods/fpagl.py): the Taylor-weighted centripetal pull, the adaptive gradient split, the cluster plan
on the shared budget, and the exact merge at the end, without the trainer (the run: tests/methods/test_contract.py).
"""

import copy

import numpy as np
import pytest
import torch

from tests.models import randomize
from tests.slim.test_equivalence import flat, images
from yolo_prune.graph.analyze import analyze
from yolo_prune.masks.budget import Budget
from yolo_prune.masks.clusters import ClusterCentres
from yolo_prune.masks.mask import MaskSet
from yolo_prune.methods.context import PruneContext
from yolo_prune.methods.fpagl import FPAGL, agl_mix, plan_clusters, pull_strength
from yolo_prune.methods.settings import PruneSettings
from yolo_prune.nn.build import load_model
from yolo_prune.slim.merge import merge_clusters


def test_plan_clusters_heads_the_kept_channels_and_joins_the_nearest():
    features = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.5, 0.0], [9.0, 1.0], [0.0, 1.0], [20.0, 0.0]])
    keep = np.array([True, True, False, False, False, True])
    assert plan_clusters(features, keep) == [[0, 2, 4], [1, 3]]  # channel 5 stays alone: not returned


def test_pull_schedule_reaches_zero_at_the_end_whatever_the_number_of_steps():
    for steps in (5, 200):
        distance, done = 1.0, 0.25
        for phase in np.linspace(0.25, 1.0, steps + 1)[1:]:
            distance *= 1 - pull_strength(done, phase, 2.0)
            done = phase
        assert distance == 0.0
    # at any point the distance is ((1 - phase) / (1 - start))^power of where it started, not a per-step constant
    few = (1 - pull_strength(0.25, 0.5, 2.0)) * (1 - pull_strength(0.5, 0.7, 2.0))
    many = np.prod([1 - pull_strength(a, b, 2.0) for a, b in zip(np.linspace(0.25, 0.7, 50)[:-1],
                                                                  np.linspace(0.25, 0.7, 50)[1:])])  # fmt: skip
    assert few == pytest.approx((0.3 / 0.75) ** 2) and many == pytest.approx((0.3 / 0.75) ** 2)
    assert pull_strength(0.5, 0.5, 2.0) == 0.0 and pull_strength(0.9, 1.0, 2.0) == 1.0
    assert agl_mix(0.0, 0.7) == 0.0 and agl_mix(0.35, 0.7) == 0.5 and agl_mix(0.9, 0.7) == 1.0


@pytest.fixture(scope="module")
def v8n():
    model = randomize(load_model("yolov8n.yaml"))
    return model, analyze(model, 160)


def context(model, graph, progress=0.25, phase=None, flops=0.3):
    settings = PruneSettings(flops=flops, method="fpagl", imgsz=160).validate()
    return PruneContext(model=model, graph=graph, budget=Budget(graph), masks=MaskSet(graph), settings=settings,
                        base_gflops=graph.gflops(), progress=progress, phase=progress if phase is None else phase,
                        step=0, target_gflops=graph.gflops())  # fmt: skip


def test_centres_are_taylor_weighted(v8n):
    """Important filters move least: the merged filter is the importance-weighted mean of its cluster."""
    model, graph = copy.deepcopy(v8n[0]), v8n[1]
    g = graph.groups[4]
    bn = dict(model.named_modules())[g.members[0].replace(".conv", ".bn")]
    gamma = bn.weight.detach().clone()
    ClusterCentres(graph, {g.name: [[0, 1]]}, {g.name: np.r_[3.0, 1.0, np.ones(g.width - 2)]}).pull(model, 1.0)
    assert torch.allclose(bn.weight[:2], (0.75 * gamma[0] + 0.25 * gamma[1]).expand(2))
    assert torch.equal(bn.weight[2:], gamma[2:])


def test_agl_keeps_part_of_each_gradient_and_shares_the_rest(v8n):
    model, graph = copy.deepcopy(v8n[0]), v8n[1]
    method = FPAGL(graph, Budget(graph))
    ctx = context(model, graph)
    method.prune_step(ctx)  # plans the clusters
    group, cluster = next((g, c[0]) for g, c in method.clusters.items())
    conv = dict(model.named_modules())[next(gr for gr in graph.groups if gr.name == group).members[0]]
    own = torch.randn_like(conv.weight)
    centres = ClusterCentres(graph, method.clusters, method.weights)
    shared = centres.centre(group, own)  # rows are the group channels for a group's first member conv
    for phase, mix in ((0.0, 0.0), (0.35, 0.5), (0.8, 1.0)):
        for p in model.parameters():
            p.grad = None
        conv.weight.grad = own.clone()
        method.pulled_to = phase  # the mix follows the progress the pull has reached
        method.before_optimizer_step(ctx)
        expected = (1 - mix) * own.double() + mix * shared
        assert torch.allclose(conv.weight.grad.double(), expected, atol=1e-6), phase
    g = conv.weight.grad[cluster]
    assert (g - g[0]).abs().max() < 1e-6  # past the ramp a cluster moves as one
    assert not torch.allclose(own[cluster], own[cluster][0].expand_as(own[cluster]))  # it did not before


def run_pruning_phase(model, graph, pull=True, steps=24, seed=0):
    """The pruning phase without the trainer: 4 pruning steps, SGD steps with noisy gradients between them (they
    push filters apart), the hooks at their points. Returns the method and its logged rows."""
    torch.manual_seed(seed)
    method = FPAGL(graph, Budget(graph))
    if not pull:
        method._pull = lambda ctx, phase: None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx = context(model, graph)
    ctx.optimizer, rows = optimizer, []
    for k in range(4):
        ctx.step, ctx.progress = k, (k + 1) / 4
        ctx.phase = ctx.progress
        method.prune_step(ctx)
        rows.append(dict(ctx.logged))
        ctx.logged.clear()
        if k == 3:
            break
        for i in range(steps // 4):
            for p in model.parameters():
                p.grad = torch.randn_like(p) * 0.01
            ctx.phase = ctx.progress + (i + 1) / steps
            method.before_optimizer_step(ctx)
            optimizer.step()
            method.after_optimizer_step(ctx)
    return method, rows


def test_clusters_converge_and_merge_exactly_at_the_flops_target(v8n, coco8_images):
    model, graph = copy.deepcopy(v8n[0]).double(), v8n[1]
    method, rows = run_pruning_phase(model, graph)
    distances = [r["cluster_distance"] for r in rows]
    assert distances[0] > 0.1 and distances[1] < 0.6 * distances[0] and distances[2] < 0.2 * distances[0]
    assert ClusterCentres(graph, method.clusters).distance(model).max() < 1e-9  # the last step: identical
    assert all(r["merged_gflops"] == pytest.approx(graph.gflops() * 0.7, abs=0.005 * graph.gflops()) for r in rows)
    x = images(coco8_images[:2], size=160)
    ctx = context(model, graph, progress=1.0)
    clusters = method.finish(ctx)
    assert ctx.logged["final_residual"] < 1e-9
    with torch.no_grad():
        before = flat(model.eval()(x))
    masks = merge_clusters(model, graph, MaskSet(graph), clusters)
    with torch.no_grad():
        after = flat(model.eval()(x))
    assert (after - before).abs().max().item() < 1e-4  # the merged model is the pre-merge model
    assert graph.gflops(masks.masks) == pytest.approx(graph.gflops() * 0.7, abs=0.005 * graph.gflops())


def test_without_the_centripetal_pull_clusters_do_not_converge(v8n):
    model, graph = copy.deepcopy(v8n[0]), v8n[1]
    method, rows = run_pruning_phase(model, graph, pull=False)
    assert rows[-1]["cluster_distance"] > 0.5 * rows[0]["cluster_distance"]
    ctx = context(model, graph, progress=1.0)
    method.finish(ctx)  # the final snap makes them identical anyway, and says how far it had to move them
    assert ctx.logged["final_residual"] > 0.1


def test_state_round_trip(v8n):
    model, graph = copy.deepcopy(v8n[0]), v8n[1]
    method, _ = run_pruning_phase(model, graph, steps=4)
    restored = FPAGL(graph, Budget(graph))
    restored.load_state_dict(copy.deepcopy(method.state_dict()))
    assert restored.clusters == method.clusters and restored.pulled_to == method.pulled_to
    assert all(np.array_equal(restored.weights[k], v) for k, v in method.weights.items())
