"""Channel groups, couplings and the FLOPs cost model, against Ultralytics' own counter."""

import numpy as np
import pytest
import torch
from torch import nn
from ultralytics.utils.torch_utils import get_flops

from yolo_prune.graph.analyze import analyze
from yolo_prune.nn.build import load_model


def random_masks(graph, keep_frac, seed=0):
    rng = np.random.default_rng(seed)
    masks = {}
    for g in graph.groups:
        keep = np.zeros(g.width, bool)
        keep[rng.choice(g.width, max(1, round(g.width * keep_frac)), replace=False)] = True
        masks[g.name] = keep
    return masks


def test_c2f_halves_and_residuals_are_coupled():
    graph = analyze(load_model("yolov8n.yaml"))
    groups = {g.name: g for g in graph.groups}
    # backbone C2f with shortcut: cv1's two chunk halves and the bottleneck outputs added to them form one group
    g = groups["model.2.cv1"]
    assert set(g.members) == {"model.2.cv1.conv", "model.2.m.0.cv2.conv"}
    assert g.width == 16  # 32 output channels of cv1 = 16 coupled pairs (chunk halves keep equal width)
    # neck C2f without shortcut: the bottleneck output is its own group
    assert "model.12.m.0.cv2" in groups


def test_detect_outputs_fixed_and_towers_prunable():
    graph = analyze(load_model("yolov8n.yaml"))
    finals = [s for s in graph.sites if s.site.name.startswith("model.22.cv") and s.site.name.endswith(".2")]
    assert len(finals) == 6 and all((s.out_comp < 0).all() for s in finals)  # 64 box and nc class outputs stay
    assert all((s.in_comp >= 0).all() for s in finals)  # but their inputs (the towers) are prunable
    assert not graph.barriers


def test_depthwise_conv_shares_its_input_group():
    graph = analyze(load_model("yolo11n.yaml"))
    dw = next(s for s in graph.sites if s.site.depthwise and s.site.name.startswith("model.23.cv3"))
    assert (dw.in_comp == dw.out_comp).all()


def test_attention_is_a_listed_barrier_and_ffn_is_prunable():
    graph = analyze(load_model("yolo11n.yaml"))
    assert graph.barriers == ["model.10.m.0.attn (Attention)"]
    assert "model.10.m.0.ffn.0" in {g.name for g in graph.groups}


class Mystery(nn.Module):
    """A module the engine has no rule for."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_unknown_module_is_kept_whole_not_a_crash():
    model = load_model("yolov8n.yaml")
    wrapped = Mystery(model.model[4])
    for attr in ("f", "i", "type", "np"):
        setattr(wrapped, attr, getattr(model.model[4], attr))
    model.model[4] = wrapped
    graph = analyze(model)
    assert graph.barriers == ["model.4 (Mystery)"]
    assert not any(g.name.startswith("model.4.") for g in graph.groups)
    assert graph.gflops() == pytest.approx(get_flops(model, 640), rel=1e-9)


@pytest.mark.parametrize("name", ["yolov8n.yaml", "yolo26n.yaml", "yolov7-tiny.yaml"])
def test_predicted_flops_equal_ultralytics_counter(name):
    from yolo_prune.slim.slim import slim

    model = load_model(name)
    graph = analyze(model)
    assert graph.gflops() == pytest.approx(get_flops(model, 640), rel=1e-9)
    masks = random_masks(graph, 0.55, seed=1)
    assert graph.gflops(masks) == pytest.approx(get_flops(slim(model, graph, masks), 640), rel=1e-9)
    if name == "yolov8n.yaml":  # a pure conv net: everything but the DFL conv is traced, so the check is not circular
        assert 2 * graph.untraced_macs / 1e9 < 0.002


def test_params_prediction_matches_slim_model():
    from yolo_prune.slim.slim import slim

    model = load_model("yolo11n.yaml")
    graph = analyze(model)
    masks = random_masks(graph, 0.4, seed=2)
    assert graph.params(model, masks) == sum(p.numel() for p in slim(model, graph, masks).parameters())


def test_flops_counted_at_other_image_sizes():
    model = load_model("yolov5nu.yaml")
    for size in (320, 416):
        assert analyze(model, size).gflops() == pytest.approx(get_flops(model, size), rel=1e-9)


def test_analysis_leaves_the_model_unchanged():
    model = load_model("yolov8n.yaml").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analyze(model)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
