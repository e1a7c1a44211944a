"""The kit's numpy pre/post-processing against Ultralytics' own (LetterBox, non_max_suppression, scale_boxes)."""

import numpy as np
import pytest
import torch
from ultralytics.data.augment import LetterBox
from ultralytics.utils import nms as ul_nms
from ultralytics.utils import ops


def raw_output(seed, nc=5, n=400, imgsz=320):
    """A synthetic (4 + nc, N) head output with clusters of overlapping boxes, like a real detector's."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(40, imgsz - 40, (12, 2))
    xy = centres[rng.integers(0, 12, n)] + rng.normal(0, 6, (n, 2))
    wh = rng.uniform(20, 90, (12, 2))[rng.integers(0, 12, n)] * rng.uniform(0.8, 1.2, (n, 2))
    scores = rng.beta(0.3, 2.0, (n, nc))  # mostly low, some confident, several classes per box
    return np.concatenate([xy, wh, scores], 1).T.astype(np.float32)


SETTINGS = [(0.25, False, False), (0.001, True, False), (0.25, False, True)]  # predict, val, agnostic predict


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("conf, multi_label, agnostic", SETTINGS)
def test_decode_equals_ultralytics_nms(yolokit, seed, conf, multi_label, agnostic):
    out = raw_output(seed)
    ours = yolokit.decode(out, conf=conf, iou=0.7, max_det=300, multi_label=multi_label, agnostic=agnostic)
    ref = ul_nms.non_max_suppression(torch.from_numpy(out[None]), conf, 0.7, multi_label=multi_label,
                                     agnostic=agnostic, max_det=300)[0].numpy()  # fmt: skip
    assert len(ref) > 10
    order_ours, order_ref = np.lexsort((-ours[:, 4], ours[:, 5])), np.lexsort((-ref[:, 4], ref[:, 5]))
    np.testing.assert_array_equal(ours[order_ours, 5], ref[order_ref, 5])
    np.testing.assert_allclose(ours[order_ours, :5], ref[order_ref, :5], atol=1e-4)


def test_decode_keeps_at_most_max_det_and_nothing_below_conf(yolokit):
    out = raw_output(7, n=3000)
    det = yolokit.decode(out, conf=0.001, iou=0.99, max_det=50, multi_label=True)
    assert len(det) == 50 and det[:, 4].min() > 0.001
    assert np.all(np.diff(det[:, 4]) <= 0)  # best first
    assert len(yolokit.decode(np.zeros((9, 100), np.float32))) == 0


@pytest.mark.parametrize("shape", [(480, 640), (640, 427), (333, 500), (100, 700)])
@pytest.mark.parametrize("imgsz", [(320, 320), (256, 416)])
def test_letterbox_and_box_scaling_match_ultralytics(yolokit, shape, imgsz):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    ours = yolokit.letterbox(image, imgsz)
    ref = LetterBox(imgsz, auto=False)(image=image)
    np.testing.assert_array_equal(ours, ref)
    tensor = yolokit.preprocess(image, imgsz)
    assert tensor.dtype == np.float32 and tensor.shape == (3, *imgsz)
    np.testing.assert_allclose(tensor, ref[..., ::-1].transpose(2, 0, 1) / 255.0, atol=1e-7)  # RGB, 0-1, CHW
    boxes = np.c_[rng.uniform(0, imgsz[1] / 2, (20, 2)), rng.uniform(imgsz[1] / 2, imgsz[1], (20, 2))]
    boxes[:, [1, 3]] *= imgsz[0] / imgsz[1]
    boxes = boxes.astype(np.float32)
    expected = ops.scale_boxes(imgsz, torch.from_numpy(boxes.copy()), shape).numpy()
    np.testing.assert_allclose(yolokit.scale_boxes(boxes, imgsz, shape), expected, atol=1e-3)
