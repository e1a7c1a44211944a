"""Merging identical channels (slim/merge.py): merged == unmerged on real images, on several model families."""

import copy

import numpy as np
import pytest
import torch

from tests.models import randomize
from tests.slim.test_equivalence import flat, images
from yolo_prune.errors import YoloPruneError
from yolo_prune.graph.analyze import analyze
from yolo_prune.masks.clusters import ClusterCentres
from yolo_prune.masks.mask import MaskSet
from yolo_prune.nn.build import load_model
from yolo_prune.slim.merge import merge_clusters
from yolo_prune.slim.slim import slim

# yolov8n: C2f chunk halves and residual adds, SPPF's pooled copies; yolov7-tiny: ELAN concats; the IDetect variant:
# ImplicitA shifts in front of the head convs; yolo11n: C3k2 and C2PSA
MODELS = ["yolov8n.yaml", "yolov7-tiny.yaml", "yolov7-tiny-idetect.yaml", "yolo11n.yaml"]


def random_clusters(graph, keep_frac=0.5, seed=0):
    """Per group: about keep_frac of the channels kept, every other channel joins a random kept one."""
    rng = np.random.default_rng(seed)
    clusters = {}
    for g in graph.groups:
        order = rng.permutation(g.width)
        k = max(1, round(g.width * keep_frac))
        groups = [[int(c)] for c in order[:k]]
        for c in order[k:]:
            groups[rng.integers(k)].append(int(c))
        clusters[g.name] = groups
    return clusters


def outputs(model, x):
    with torch.no_grad():
        return flat(model.eval()(x))


@pytest.fixture(scope="module")
def x(coco8_images):
    return images(coco8_images[:2], size=160)


@pytest.mark.parametrize("name", MODELS)
def test_merged_equals_unmerged_on_real_images(name, x):
    model = randomize(load_model(name).double())
    graph = analyze(model)
    clusters = random_clusters(graph)
    ClusterCentres(graph, clusters).pull(model, 1.0)  # identical members: the state a converged FP-AGL run ends in
    assert all(d < 1e-12 for d, _ in ClusterCentres(graph, clusters).deviation(model).values())
    before = outputs(model, x)
    masks = merge_clusters(model, graph, graph.full_masks(), clusters)
    merged = outputs(model, x)
    removed = sum(len(c) - 1 for cs in clusters.values() for c in cs)
    assert sum((~m).sum() for m in masks.masks.values()) == removed
    assert (merged - before).abs().max().item() < 1e-4
    slimmed = slim(model, graph, masks.masks)
    assert sum(p.numel() for p in slimmed.parameters()) < sum(p.numel() for p in model.parameters())
    assert (outputs(slimmed, x) - before).abs().max().item() < 1e-4


def test_without_the_consumer_sum_masking_the_members_changes_the_output(x):
    """The consumer sum is what makes it exact: masking the same members without it changes the output."""
    model = randomize(load_model("yolov8n.yaml").double())
    graph = analyze(model)
    clusters = random_clusters(graph)
    ClusterCentres(graph, clusters).pull(model, 1.0)
    before = outputs(model, x)
    masked_only = MaskSet(graph, merge_clusters(copy.deepcopy(model), graph, graph.full_masks(), clusters).masks)
    assert (outputs(masked_only.apply(copy.deepcopy(model)), x) - before).abs().max().item() > 1e-2


def test_merge_keeps_masked_channels_and_refuses_masked_members(x):
    model = randomize(load_model("yolov8n.yaml").double())
    graph = analyze(model)
    g = graph.groups[5]
    masks = graph.full_masks()
    masks[g.name][-1] = False  # an earlier pruning step masked one channel
    MaskSet(graph, masks).apply(model)
    clusters = {g.name: [[0, 1, 2]]}
    ClusterCentres(graph, clusters).pull(model, 1.0)
    before = outputs(model, x)
    merged = merge_clusters(model, graph, masks, clusters)
    assert merged.masks[g.name].sum() == g.width - 3
    assert (outputs(model, x) - before).abs().max().item() < 1e-4
    with pytest.raises(YoloPruneError, match="masked channels"):
        merge_clusters(model, graph, merged, {g.name: [[0, g.width - 1]]})


@pytest.mark.parametrize("where", ["conv", "bn.running_var", "bn.bias"])
def test_non_identical_cluster_is_refused_and_the_model_untouched(where):
    model = randomize(load_model("yolov8n.yaml").double())
    graph = analyze(model)
    group = next(g for g in graph.groups if g.name == "model.2.cv1")  # chunk halves + residual: two member convs
    clusters = {group.name: [[0, 3], [1, 4, 5]]}
    ClusterCentres(graph, clusters).pull(model, 1.0)
    modules = dict(model.named_modules())
    with torch.no_grad():  # one member differs in one producing tensor, on the second member conv of the group
        if where == "conv":
            modules["model.2.m.0.cv2.conv"].weight[5, 0, 0, 0] += 1e-3
        else:
            getattr(modules["model.2.m.0.cv2.bn"], where.split(".")[1])[4] += 1e-3
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(YoloPruneError, match="not identical"):
        merge_clusters(model, graph, graph.full_masks(), clusters)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert ClusterCentres(graph, clusters).deviation(model)[group.name][0] > 1e-6


def test_bad_clusters_get_one_clear_error():
    graph = analyze(load_model("yolov8n.yaml"))
    model = load_model("yolov8n.yaml")
    g = graph.groups[0]
    for clusters, message in [({"nope": [[0, 1]]}, "no channel group"), ({g.name: [[0, 1], [1, 2]]}, "disjoint"),
                              ({g.name: [[0, g.width]]}, "disjoint")]:  # fmt: skip
        with pytest.raises(YoloPruneError, match=message):
            merge_clusters(model, graph, graph.full_masks(), clusters)
