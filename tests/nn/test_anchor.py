
"""Anchor-based heads (YOLOv5 Detect -> AnchorDetect, YOLOv7 IDetect): building, decoding, loss, training with the
Ultralytics trainer, fusing, export, copying, and the pruning engine's view of them."""

import copy
import io
import math

import numpy as np
import pytest
import torch
from torch import nn
from ultralytics.utils.torch_utils import get_flops

from tests.models import randomize
from yolo_prune.graph.analyze import analyze
from yolo_prune.nn.anchor import (
    AnchorDetect,
    AnchorDetectionModel,
    AnchorLoss,
    IDetect,
    fold_pruned_implicit_a,
    implicit_a_feeds,
)
from yolo_prune.nn.build import load_model

TINY = "yolov7-tiny-idetect.yaml"
OFFICIAL_ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model(TINY)


def test_yolov7_tiny_idetect_builds_to_the_official_size(tiny):
    head = tiny.model[-1]
    assert isinstance(tiny, AnchorDetectionModel) and type(head) is IDetect
    assert len(tiny.model) == 78 and head.f == [74, 75, 76]
    # YOLOv7 paper / README: YOLOv7-tiny has 6.2 M parameters and 13.8 GFLOPs at 640
    assert sum(p.numel() for p in tiny.parameters()) == pytest.approx(6.2e6, rel=0.01)
    assert get_flops(tiny, 640) == pytest.approx(13.8, abs=0.1)
    assert tiny.stride.tolist() == [8, 16, 32] and head.stride.tolist() == [8, 16, 32]
    pixels = torch.tensor(OFFICIAL_ANCHORS, dtype=torch.float32).view(3, 3, 2)
    torch.testing.assert_close(head.anchors * head.stride.view(-1, 1, 1), pixels)  # grid units, as YOLOv5 keeps them
    acts = {type(m.act) for m in tiny.modules() if hasattr(m, "conv") and hasattr(m, "act")}
    assert acts == {nn.LeakyReLU} and tiny.model[0].act.negative_slope == 0.1


def test_eval_output_is_what_ultralytics_nms_reads(tiny):
    model = copy.deepcopy(tiny).eval()
    with torch.no_grad():
        y, raw = model(torch.rand(2, 3, 64, 96))
    cells = sum((64 // s) * (96 // s) for s in (8, 16, 32))
    assert y.shape == (2, 4 + 80, 3 * cells)
    assert [r.shape for r in raw] == [(2, 3, 64 // s, 96 // s, 85) for s in (8, 16, 32)]
    assert float(y[:, 4:].min()) >= 0 and float(y[:, 4:].max()) <= 1  # scores are probabilities
    from ultralytics.utils.nms import non_max_suppression

    dets = non_max_suppression((y, raw), conf_thres=0.0, iou_thres=0.7, max_det=10)
    assert len(dets) == 2 and dets[0].shape == (10, 6)


def test_decode_matches_yolov5_formula():
    """One cell, worked out by hand: xy = (2 sigmoid - 0.5 + cell) * stride, wh = (2 sigmoid)^2 * anchor."""
    head = AnchorDetect(nc=2, anchors=[[10, 20, 30, 40]], ch=[4]).eval()
    head.stride.fill_(8.0)
    head.anchors /= 8.0
    t = torch.tensor([0.3, -0.2, 0.5, -1.0, 1.5, 0.4, -0.7])  # tx, ty, tw, th, obj, cls0, cls1
    raw = torch.zeros(1, 2, 3, 5, 7)  # (bs, na, ny, nx, 5+nc)
    raw[0, 1, 2, 4] = t  # anchor 1 (30x40 px), row 2, column 4
    y = head.decode(0, raw)[0, :, 1 * 15 + 2 * 5 + 4]  # rows are anchor-major, then y, then x
    sig = [1 / (1 + math.exp(-v)) for v in t.tolist()]
    want = [
        (2 * sig[0] - 0.5 + 4) * 8,
        (2 * sig[1] - 0.5 + 2) * 8,
        (2 * sig[2]) ** 2 * 30,
        (2 * sig[3]) ** 2 * 40,
        sig[4] * sig[5],
        sig[4] * sig[6],
    ]
    torch.testing.assert_close(y, torch.tensor(want), rtol=1e-6, atol=1e-5)


def test_target_matching_uses_anchor_ratio_and_neighbour_cells(tiny):
    loss = AnchorLoss(tiny)
    p = torch.zeros(1, 3, 8, 8, 85)  # P3 at 64 px: an 8x8 grid, anchors 1.25x1.625, 2x3.75, 4.125x2.875 cells
    # centre (2.4, 5.6) cells, 0.5 x 0.5 cells: only anchor 0 is within the 4x ratio (anchor 1: 7.5x, anchor 2: 8.25x)
    targets = torch.tensor([[0, 7, 0.3, 0.7, 0.0625, 0.0625]])
    b, a, gj, gi, tbox, tcls, anchors = loss.match(0, p, targets)
    assert a.tolist() == [0, 0, 0] and b.tolist() == [0, 0, 0] and tcls.tolist() == [7, 7, 7]
    # own cell (2, 5); x frac 0.4 < 0.5 -> the left neighbour; y frac 0.6 > 0.5 -> the neighbour below
    assert sorted(zip(gi.tolist(), gj.tolist())) == [(1, 5), (2, 5), (2, 6)]
    own = (gi == 2) & (gj == 5)
    torch.testing.assert_close(tbox[own], torch.tensor([[0.4, 0.6, 0.5, 0.5]]))
    left = gi == 1
    torch.testing.assert_close(tbox[left], torch.tensor([[1.4, 0.6, 0.5, 0.5]]))  # offset measured from that cell
    torch.testing.assert_close(anchors, tiny.model[-1].anchors[0][[0, 0, 0]])


def test_loss_values_and_gradients(tiny):
    model = copy.deepcopy(tiny).train()
    model.args = {"imgsz": 64, "box": 7.5, "cls": 0.5}
    batch = {
        "img": torch.rand(2, 3, 64, 64),
        "batch_idx": torch.tensor([0.0, 1.0, 1.0]),
        "cls": torch.tensor([[3.0], [0.0], [56.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.2, 0.3, 0.1, 0.2], [0.7, 0.6, 0.3, 0.5]]),
    }
    total, items = model.loss(batch)
    assert set(items) == {"box_loss", "obj_loss", "cls_loss"}
    assert all(float(v) > 0 and math.isfinite(float(v)) for v in items.values())
    torch.testing.assert_close(total.sum(), sum(items.values()) * 2)  # times batch size, as v8DetectionLoss
    total.sum().backward()
    head = model.model[-1]
    assert head.m[0].weight.grad.abs().sum() > 0 and head.ia[0].implicit.grad.abs().sum() > 0
    empty = dict(batch, batch_idx=torch.zeros(0), cls=torch.zeros(0, 1), bboxes=torch.zeros(0, 4))
    _, items = model.loss(empty)
    assert float(items["box_loss"]) == 0 and float(items["cls_loss"]) == 0 and float(items["obj_loss"]) > 0


def test_idetect_fuse_is_exact(tiny):
    model = randomize(copy.deepcopy(tiny)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)[0]
        fused = model.fuse(verbose=False)
        after = fused(x)[0]
    assert all(isinstance(m, nn.Identity) for m in (*fused.model[-1].ia, *fused.model[-1].im))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-3)


def test_survives_deepcopy_and_whole_module_pickling(tiny):
    model = randomize(copy.deepcopy(tiny)).eval()
    x = torch.rand(1, 3, 64, 64)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        want = model(x)[0]
        for other in (copy.deepcopy(model), loaded):
            assert type(other) is AnchorDetectionModel
            assert other.model[-1].stride.tolist() == [8, 16, 32]
            torch.testing.assert_close(other(x)[0], want, rtol=0, atol=0)


def test_channel_graph_has_no_barriers_and_counts_all_flops(tiny):
    g = analyze(tiny, 640)
    assert g.barriers == []
    assert g.untraced_macs == 0  # every conv is traced: the cost model is exact, not a remainder
    assert g.gflops() == pytest.approx(get_flops(tiny, 640), rel=1e-9)
    head = tiny.model[-1]
    names = {s.site.name: s for s in g.sites}
    for i in range(len(head.m)):
        site = names[f"model.77.m.{i}"]
        assert (site.out_comp < 0).all()  # the head's outputs are fixed
        assert (site.in_comp >= 0).all()  # its inputs prune with the layer feeding it
    assert implicit_a_feeds(tiny) == {f"model.77.ia.{i}": f"model.77.m.{i}" for i in range(3)}


def test_fold_pruned_implicit_a_keeps_the_masked_function(tiny):
    """Mask channels of the convs feeding IDetect (BN to zero), then fold + cut: the outputs must not change."""
    model = randomize(copy.deepcopy(tiny), seed=1).eval()
    head, x = model.model[-1], torch.rand(1, 3, 64, 64)
    keep = {}
    for i, layer in enumerate(head.f):
        bn, width = model.model[layer].bn, model.model[layer].conv.out_channels
        dropped = torch.arange(0, width, 3)  # every third channel
        bn.weight.data[dropped], bn.bias.data[dropped] = 0.0, 0.0  # LeakyReLU(0) = 0: the channel is exactly 0
        kept = np.setdiff1d(np.arange(width), dropped.numpy())
        keep[f"model.77.m.{i}"] = (np.arange(head.m[i].out_channels), kept)
    with torch.no_grad():
        masked = model(x)[0]
        fold_pruned_implicit_a(model, keep)
        for i, layer in enumerate(head.f):  # what the slimming step then does: cut the producer and the head conv
            kept = torch.as_tensor(keep[f"model.77.m.{i}"][1])
            conv, bn = model.model[layer].conv, model.model[layer].bn
            conv.weight = nn.Parameter(conv.weight[kept])
            conv.out_channels = len(kept)
            for name in ("weight", "bias"):
                setattr(bn, name, nn.Parameter(getattr(bn, name)[kept]))
            bn.running_mean, bn.running_var = bn.running_mean[kept], bn.running_var[kept]
            head.m[i].weight = nn.Parameter(head.m[i].weight[:, kept])
            head.m[i].in_channels = len(kept)
        slim = model(x)[0]
    assert head.ia[0].implicit.shape[1] == len(keep["model.77.m.0"][1])
    torch.testing.assert_close(slim, masked, rtol=1e-4, atol=1e-4)
    late = copy.deepcopy(tiny)  # called after the head conv was cut, the fold would use the wrong weights
    conv = late.model[-1].m[0]
    conv.weight, conv.in_channels = nn.Parameter(conv.weight[:, :5]), 5
    with pytest.raises(RuntimeError, match="already cut"):
        fold_pruned_implicit_a(late, {"model.77.m.0": (None, np.arange(5))})


def test_onnx_export_returns_one_decoded_tensor(tiny, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = randomize(copy.deepcopy(tiny)).eval()
    x = torch.rand(1, 3, 64, 64)
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["output0"], dynamo=False)
    session = ort.InferenceSession(str(path))
    outputs = session.run(None, {"images": x.numpy()})
    assert len(outputs) == 1
    with torch.no_grad():
        want = model(x)[0].numpy()
    np.testing.assert_allclose(outputs[0], want, rtol=1e-3, atol=1e-3)


def test_ultralytics_model_train_and_predict_an_idetect_model_by_name(coco8_yaml, coco8_images, tmp_path):
    """Plain Ultralytics after `import yolo_prune`: YOLO(name) builds, its own trainer trains (rebuilding the model
    from the YAML name, as DetectionTrainer does), the checkpoint predicts."""
    from ultralytics import YOLO

    yolo, start = YOLO(TINY), {}
    yolo.add_callback("on_train_start", lambda t: start.update({k: v.clone() for k, v in t.model.state_dict().items()}))
    yolo.train(data=str(coco8_yaml), epochs=1, imgsz=64, batch=4, workers=0, device="cpu", plots=False,
               project=str(tmp_path), name="run", exist_ok=True, amp=False, val=True)  # fmt: skip
    trainer = yolo.trainer
    assert type(trainer.model) is AnchorDetectionModel and trainer.loss_names == ("box_loss", "obj_loss", "cls_loss")
    assert all(math.isfinite(float(v)) for v in trainer.tloss.values())
    moved = [k for k, v in trainer.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert any(".m.0.weight" in k for k in moved) and any("ia.0.implicit" in k for k in moved)
    assert "metrics/mAP50-95(B)" in trainer.metrics
    best = YOLO(str(tmp_path / "run" / "weights" / "best.pt"))
    assert type(best.model) is AnchorDetectionModel and type(best.model.model[-1]) is IDetect
    results = best.predict([str(p) for p in coco8_images], imgsz=64, conf=0.0, max_det=10, device="cpu")
    assert len(results) == len(coco8_images) and all(r.boxes.data.shape == (10, 6) for r in results)
