"""MSVFP's loss-aware search on a real detector built from YAML: cut sizing, the shortlist, a sensitive group spared."""

import importlib.util
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.models import randomize
from yolo_prune.graph.analyze import analyze
from yolo_prune.masks.budget import Budget
from yolo_prune.masks.mask import MaskSet
from yolo_prune.methods import PruneContext, get_method
from yolo_prune.methods.criteria import FoldedL2
from yolo_prune.methods.msvfp import (
    MAGNITUDE,
    SIMILARITY,
    Cut,
    LossAwareSearch,
    StepCriterion,
    criterion_at,
    size_cut,
    with_cut,
)
from yolo_prune.methods.settings import PruneSettings
from yolo_prune.nn.build import load_model

SENSITIVE = "model.8.m.0.cv1"  # a bottleneck conv deep in the backbone, one consumer (model.8.m.0.cv2)


@pytest.fixture(scope="module")
def v8n():
    model = randomize(load_model("yolov8n.yaml")).eval()
    graph = analyze(model, 64)
    return model, graph, Budget(graph)


def test_a_cut_is_aligned_above_the_floor_and_its_saving_is_exact(v8n):
    _, graph, budget = v8n
    rng = np.random.default_rng(0)
    masks = graph.full_masks()
    masks["model.2.cv1"][:4] = False  # an unaligned width: the next cut first drops the remainder
    for g in graph.groups:
        score, counts = rng.random(g.width), budget.counts(masks)
        for want in (1e-6, 0.01 * graph.gflops(), 1.0):
            cut = size_cut(budget, g.gid, masks[g.name], score, counts, want)
            kept = int(masks[g.name].sum()) - len(cut.channels)
            assert kept % budget.round_to == 0 and kept >= budget.floors[g.gid]
            assert masks[g.name][cut.channels].all()  # only alive channels
            alive = np.flatnonzero(masks[g.name])  # the lowest-scoring ones
            assert set(cut.channels) == set(alive[np.argsort(score[alive])[: len(cut.channels)]])
            # the incremental saving equals a full recount by the graph's cost model
            assert cut.saved == pytest.approx(graph.gflops(masks) - graph.gflops(with_cut(masks, cut)), rel=1e-9)
            if want >= 1.0:  # unreachable: the cut goes down to the floor
                assert kept == budget.floors[g.gid]


def test_the_shortlist_mixes_the_cheapest_measured_groups_with_unmeasured_ones():
    search = LossAwareSearch(budget=None, candidates=4)
    cuts = [Cut(f"g{i}", i, np.arange(8), 1.0, cost=float(10 - i)) for i in range(10)]
    search.estimates = {"g0": 0.5, "g1": 0.1, "g2": 0.3}
    names = [c.group for c in search.shortlist(cuts)]
    assert names == ["g1", "g2", "g9", "g8"]  # two measured (cheapest first), two fresh in criterion order
    search.candidates = 0  # every group, as in the paper
    assert len(search.shortlist(cuts)) == 10
    assert criterion_at(0.1, 0.3) == MAGNITUDE and criterion_at(0.15, 0.3) != MAGNITUDE


def sensitise(model, graph, name, weak):
    """Make channels `weak` of group `name` look weak to any magnitude rule yet carry the network's output: their BN
    scale shrinks 1000x while every consumer reads them 10^4 x louder."""
    group = next(g for g in graph.groups if g.name == name)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for s in graph.sites:
            if s.site.name in group.members:
                modules[s.site.norm_name].weight[weak] *= 1e-3
            comps = s.in_comp
            mine = (comps >= 0) & (graph.comp_group[np.maximum(comps, 0)] == group.gid)
            cols = np.flatnonzero(mine & np.isin(graph.comp_local[np.maximum(comps, 0)], weak))
            if len(cols):
                modules[s.site.name].weight[:, cols] *= 1e4
    return group


def output_change(model, graph, images):
    """Loss of a mask set: the relative change of the features entering the head plus that of its raw outputs (box
    distributions, class logits; in a random network they are mostly the head's biases, hence the features)."""

    @torch.no_grad()
    def raw(masks=None):
        norms = {n: (m.weight.clone(), m.bias.clone()) for n, m in model.named_modules() if hasattr(m, "running_var")}
        MaskSet(graph, masks).apply(model)
        out = model(images)[1]
        for n, m in model.named_modules():  # restore the masked BN rows
            if n in norms:
                m.weight.copy_(norms[n][0]), m.bias.copy_(norms[n][1])
        return [torch.cat([f.flatten(1) for f in out["feats"]], 1), torch.cat([out["boxes"], out["scores"]], 1)]

    dense = raw()
    return lambda masks: sum(float(((a - b) ** 2).sum() / (b**2).sum()) for a, b in zip(raw(masks), dense))


def test_the_loss_aware_search_spares_a_sensitive_group_that_magnitude_would_cut_first(v8n):
    model, graph, _ = v8n
    model = deepcopy(model)
    group = sensitise(model, graph, SENSITIVE, weak=np.arange(32, 128))
    budget = Budget(graph)
    loss = output_change(model, graph, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))

    scores = FoldedL2(graph)(model)  # magnitude does not change as channels go

    def magnitude(masks, gflops):
        return MAGNITUDE, scores

    target = graph.gflops() * 0.9
    # premise: by the criterion alone (cost per GFLOP), the sensitive group's cut is the first one
    full, counts = graph.full_masks(), budget.counts(graph.full_masks())
    cuts = [size_cut(budget, g.gid, full[g.name], scores[g.name], counts, 0.03 * graph.gflops()) for g in graph.groups]
    assert min((c for c in cuts if c), key=lambda c: c.cost).group == group.name

    search = LossAwareSearch(budget, step=0.03, candidates=4)
    masks, records = search.run(full, target, magnitude, loss)
    assert masks[group.name].all()  # spared
    assert graph.gflops(masks) == pytest.approx(target, abs=0.002 * graph.gflops())
    assert len({r["group"] for r in records}) >= 3  # variable rate: several groups cut, by what the loss allowed
    evaluated = [r for r in records if r["candidates"]]
    assert any(group.name in r["candidates"] for r in evaluated)  # it was measured...
    for r in evaluated:  # ...and every commit took the cheapest candidate per GFLOP measured
        if group.name in r["candidates"]:
            assert r["candidates"][group.name] > 10 * max(v for k, v in r["candidates"].items() if k != group.name)

    # without the loss (every cut equally good), the same search cuts the sensitive group first
    blind, _ = LossAwareSearch(budget, step=0.03, candidates=4).run(full, target, magnitude, lambda m: 0.0)
    assert not blind[group.name].all()


def test_similarity_sums_distances_to_the_alive_filters_and_the_criterion_switches_at_half_the_target(v8n):
    model, graph, budget = v8n
    model = deepcopy(model)
    name = "model.8.m.0.cv1"  # one member conv
    modules = dict(model.named_modules())
    conv, bn = modules[name + ".conv"], modules[name + ".bn"]
    with torch.no_grad():  # channel 5: the centre of the others (its folded filter), the most replaceable one
        fold = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight[5] = (conv.weight * fold[:, None, None, None]).mean(0) / fold[5]
    method = get_method("msvfp")(graph, budget)
    ctx = PruneContext.one_shot(model, graph, budget, graph.gflops() * 0.7, settings=PruneSettings(flops=0.3))
    scorer = StepCriterion(method, ctx)
    masks = graph.full_masks()
    assert scorer(masks, graph.gflops() * 0.9)[0] == MAGNITUDE  # 10 % cut of a 30 % target
    masks[name][64:] = False
    criterion, scores = scorer(masks, graph.gflops() * 0.8)
    assert criterion == SIMILARITY
    f = (conv.weight.flatten(1) * fold[:, None]).detach().double()[:64]  # reference: distances among alive filters
    reference = torch.cdist(f, f).sum(1).numpy()
    np.testing.assert_allclose(scores[name][:64], reference / reference.mean(), rtol=1e-6)
    assert scores[name][:64].argmin() == 5 and (scores[name][64:] == 0).all()


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[2] / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_pruning_step_searches_with_the_detection_loss_and_logs_it(coco8):
    from ultralytics.cfg import get_cfg

    from yolo_prune.train.loss import detection_loss
    from yolo_prune.train.pruner import InTrainingPruner

    model = load_model("yolov8n.yaml")
    model.args = get_cfg()  # the loss gains, as the trainer sets them
    settings = PruneSettings(flops=0.1, method="msvfp", imgsz=64, options={"msvfp_batches": 2}).validate()
    pruner = InTrainingPruner(model, settings, epochs=1, loss=detection_loss)
    images = sorted((coco8 / "images" / "train").glob("*.jpg"))
    for batch in load_tool("bench_msvfp").batches(images, coco8 / "labels" / "train", 64, size=2):
        pruner.cache(batch)  # 2 of 2 images
    dense = pruner.loss()
    done = pruner.maybe_step(model, None, position=1.0)  # the last step: the whole 10 % cut
    log = done["extra"]
    assert pruner.masks.gflops() == pytest.approx(pruner.base_gflops * 0.9, abs=0.002 * pruner.base_gflops)
    assert log["msvfp_loss_before"] == pytest.approx(dense)  # the real loss on the two cached batches
    commits = log["msvfp_groups"].split()
    measured = log["msvfp_candidates"].split("; ")
    assert len(commits) == log["msvfp_commits"] >= 2 and log["msvfp_criterion"] == "magnitude/similarity"
    for commit, candidates in zip(commits, measured):  # the group committed is one of the candidates measured
        losses = {g: float(v) for g, v in (c.split(":") for c in candidates.split(","))}
        assert commit.rsplit("-", 1)[0] in losses and len(losses) == 6
    if not commits[-1].startswith("trim:"):  # the loss the search tracked is the loss of the masks it returns
        assert log["msvfp_loss"] == pytest.approx(pruner.loss(), rel=1e-5)
    assert log["msvfp_evals"] == 1 + 6 * len(measured) and log["msvfp_seconds"] > 0
    state = pruner.method.state_dict()
    other = get_method("msvfp")(pruner.graph, pruner.budget, settings.options)
    other.load_state_dict(state)
    assert other.search.estimates == pruner.method.search.estimates and state["estimates"]
