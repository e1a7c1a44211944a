"""Cluster centres (masks/clusters.py): weights, mixing, what stays alone, which channel a merge keeps."""

import numpy as np
import pytest
import torch

from yolo_prune.graph.analyze import analyze
from yolo_prune.masks.clusters import ClusterCentres, merged_masks
from yolo_prune.nn.build import load_model


@pytest.fixture(scope="module")
def graph():
    return analyze(load_model("yolov8n.yaml"), 64)


def test_centres_mix_and_leave_singletons_alone(graph):
    g = graph.groups[0]  # 16 channels
    weights = np.ones(g.width)
    weights[[2, 3]] = 0  # a cluster without any weight falls back to its plain mean
    centres = ClusterCentres(graph, {g.name: [[0, 1], [2, 3]]}, {g.name: np.r_[3.0, 1.0, weights[2:]]})
    x = torch.arange(g.width, dtype=torch.float64)[:, None] * torch.ones(1, 3)
    c = centres.centre(g.name, x)
    assert torch.allclose(c[:2], torch.full((2, 3), 0.25, dtype=torch.float64))
    assert torch.allclose(c[2:4], torch.full((2, 3), 2.5, dtype=torch.float64))
    assert torch.equal(c[4:], x[4:])  # channels in no cluster are their own centre
    half = centres.mix(g.name, x, 0.5)
    assert torch.allclose(half[1], torch.full((3,), 0.625, dtype=torch.float64))
    assert torch.equal(centres.mix(g.name, x, 1.0)[:2], c[:2])


def test_merged_masks_keep_the_first_index_of_each_cluster(graph):
    g = graph.groups[0]
    masks = merged_masks(graph, graph.full_masks(), {g.name: [[3, 0, 5]]})
    assert np.flatnonzero(~masks[g.name]).tolist() == [0, 5]
