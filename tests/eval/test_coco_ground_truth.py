"""pycocotools on coco128: the ground truth built from YOLO labels against the official COCO JSON shipped with it.

What is compared, and why: the official JSON differs from the labels in two documented ways that change COCO numbers
by design, not by error. (1) It has 10 `iscrowd` regions, which pycocotools ignores (detections on them count neither
way); YOLO labels have no crowd flag. (2) Its `area` is the mask area, which decides small/medium/large; a box-only
ground truth can only use the box area. So:

- against the official JSON with crowd regions dropped and areas set to box areas, the label ground truth must give
  all 12 metrics identical (this checks image sizes, pixel boxes, image ids and the category-id mapping);
- against the raw official JSON, with detections kept off crowd regions, the six all-area metrics must be identical
  while the size-range ones may differ (mask areas).
"""

import json

import numpy as np
import pytest

from yolo_prune.data import dataset_labels
from yolo_prune.errors import YoloPruneError
from yolo_prune.eval.coco import (
    COCO_METRICS,
    category_map,
    coco_metrics,
    detections_to_coco,
    find_instances_json,
    ground_truth_from_labels,
)

ALL_AREA = ("AP50-95", "AP50", "AP75", "AR1", "AR10", "AR100")


@pytest.fixture(scope="module")
def coco128_split(coco128_linked):
    labels, names = dataset_labels(coco128_linked / "data.yaml")
    official_file = coco128_linked / "annotations" / "instances_train2017_coco128.json"
    official = json.loads(official_file.read_text())
    return labels, names, official, official_file


def perturbed_detections(labels, seed=0):
    """Detections derived from the labels: 15% missed, boxes jittered by 10% of their size, 10% wrong class, 0-3
    false positives an image, random scores. Per image: (file, xyxy pixels, scores, classes)."""
    rng = np.random.default_rng(seed)
    out = []
    for lb in labels:
        h, w = lb["shape"]
        xywh = lb["bboxes"] * [w, h, w, h]
        xyxy = np.c_[xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2]
        cls = lb["cls"].reshape(-1).astype(int)
        found = rng.random(len(cls)) < 0.85
        boxes = (xyxy + rng.normal(0, 0.1, xyxy.shape) * np.tile(xywh[:, 2:], 2))[found]
        classes = cls[found]
        wrong = rng.random(len(classes)) < 0.1
        classes[wrong] = rng.integers(0, 80, wrong.sum())
        n_fp = int(rng.integers(0, 4))
        corner = rng.uniform(0, [w, h], (n_fp, 2))
        boxes = np.r_[boxes, np.c_[corner, corner + rng.uniform(10, 200, (n_fp, 2))]]
        classes = np.r_[classes, rng.integers(0, 80, n_fp)]
        out.append((lb["im_file"], boxes, rng.uniform(0.05, 1.0, len(classes)), classes))
    return out


def official_image_ids(official, labels):
    by_name = {img["file_name"]: img["id"] for img in official["images"]}
    return {lb["im_file"]: by_name[lb["im_file"].rsplit("/", 1)[-1]] for lb in labels}


def box_protocol(official):
    """The official JSON as a box-only ground truth: no crowd regions, box areas."""
    anns = [{**a, "area": a["bbox"][2] * a["bbox"][3]} for a in official["annotations"] if not a["iscrowd"]]
    return {**official, "annotations": anns}


def test_label_ground_truth_has_the_official_images_boxes_and_categories(coco128_split):
    labels, names, official, _ = coco128_split
    gt, image_ids = ground_truth_from_labels(labels, names)
    assert len(gt["images"]) == 128 and len(gt["annotations"]) == 929  # 939 official minus 10 crowd
    sizes = {img["id"]: (img["width"], img["height"]) for img in official["images"]}
    assert all(sizes[img["id"]] == (img["width"], img["height"]) for img in gt["images"])  # ids are the COCO ids
    assert image_ids == official_image_ids(official, labels)
    # class k -> the k-th official category id in ascending order (1..90 with gaps), by name too
    mapping = category_map(official["categories"], names)
    assert mapping == dict(enumerate(sorted(c["id"] for c in official["categories"])))
    assert mapping[11] == 13 and mapping[79] == 90  # stop sign, toothbrush


def test_the_label_cache_is_written_beside_the_linked_labels_not_into_shared(coco128_split, coco128_linked):
    assert (coco128_linked / "labels" / "train2017.cache").is_file()


def test_label_and_official_ground_truth_give_the_same_12_metrics(coco128_split):
    labels, names, official, _ = coco128_split
    dets = perturbed_detections(labels)
    gt, image_ids = ground_truth_from_labels(labels, names)
    ours, _ = coco_metrics(gt, detections_to_coco(dets, image_ids, {k: k + 1 for k in names}))
    mapping = category_map(official["categories"], names)
    official_dets = detections_to_coco(dets, official_image_ids(official, labels), mapping)
    theirs, _ = coco_metrics(box_protocol(official), official_dets)
    assert 0.1 < ours["AP50-95"] < 0.5 and 0.3 < ours["AP50"] < 0.8  # a real, non-trivial score
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert set(ours) == set(COCO_METRICS)


def test_raw_official_json_differs_only_where_crowd_and_mask_areas_matter(coco128_split):
    labels, names, official, _ = coco128_split
    image_ids = official_image_ids(official, labels)
    crowd = {}
    for a in official["annotations"]:
        if a["iscrowd"]:
            crowd.setdefault(a["image_id"], []).append(a["bbox"])

    def off_crowd(file, box):
        x1, y1, x2, y2 = box
        return all(min(x2, cx + cw) <= max(x1, cx) or min(y2, cy + ch) <= max(y1, cy)
                   for cx, cy, cw, ch in crowd.get(image_ids[file], []))  # fmt: skip

    dets = []
    for file, boxes, scores, classes in perturbed_detections(labels, seed=1):
        keep = np.array([off_crowd(file, b) for b in boxes], bool)
        dets.append((file, boxes[keep], scores[keep], classes[keep]))
    assert sum(len(d[1]) for d in dets) > 800
    coco_dets = detections_to_coco(dets, image_ids, category_map(official["categories"], names))
    raw, _ = coco_metrics(official, coco_dets)
    boxed, _ = coco_metrics(box_protocol(official), coco_dets)
    assert [raw[k] for k in ALL_AREA] == pytest.approx([boxed[k] for k in ALL_AREA], abs=1e-9)
    assert raw["AP_medium"] != pytest.approx(boxed["AP_medium"], abs=1e-4)  # mask vs box areas move objects


@pytest.mark.parametrize("source", ["labels", "official"])
def test_ground_truth_as_predictions_scores_one(coco128_split, tmp_path, source):
    labels, names, official, official_file = coco128_split
    if source == "labels":
        gt, _ = ground_truth_from_labels(labels, names)
        gt_file = tmp_path / "gt.json"
        gt_file.write_text(json.dumps(gt))
    else:
        gt, gt_file = official, official_file
    anns = [a for a in gt["annotations"] if not a["iscrowd"]]
    pred_file = tmp_path / "predictions.json"
    pred_file.write_text(json.dumps([{**{k: a[k] for k in ("image_id", "category_id", "bbox")}, "score": 1.0}
                                     for a in anns]))  # fmt: skip
    metrics, summary = coco_metrics(str(gt_file), str(pred_file))
    assert "Average Precision" in summary
    for name in COCO_METRICS:
        if name not in ("AR1", "AR10"):
            assert metrics[name] == 1.0, name
    # AR@1 / AR@10 cap the detections per image and class: recall is sum(min(k, n)) / sum(n) per class, averaged
    for k in (1, 10):
        counts = {}
        for a in anns:
            counts.setdefault(a["category_id"], {}).setdefault(a["image_id"], 0)
            counts[a["category_id"]][a["image_id"]] += 1
        expected = np.mean([sum(min(k, n) for n in c.values()) / sum(c.values()) for c in counts.values()])
        assert metrics[f"AR{k}"] == pytest.approx(expected, abs=1e-12)


def test_no_detections_score_zero_and_unknown_images_are_refused(coco128_split):
    labels, names, *_ = coco128_split
    gt, _ = ground_truth_from_labels(labels, names)
    metrics, _ = coco_metrics(gt, [])
    assert metrics["AP50-95"] == 0.0 and metrics["AR100"] == 0.0
    with pytest.raises(YoloPruneError, match="image ids absent"):
        coco_metrics(gt, [{"image_id": -5, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])


def test_official_json_is_found_only_when_it_lists_every_evaluated_image(coco128_split, tmp_path):
    labels, _, official, official_file = coco128_split
    assert find_instances_json([lb["im_file"] for lb in labels]) == official_file
    files = []
    for lb in labels[:3]:  # a small dataset laid out like COCO: images/<split>/ and annotations/
        link = tmp_path / "images" / "val2017" / lb["im_file"].rsplit("/", 1)[-1]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(lb["im_file"])
        files.append(str(link))
    (tmp_path / "annotations").mkdir()
    partial = tmp_path / "annotations" / "instances_val2017.json"
    listed = [img for img in official["images"] if img["file_name"] != files[0].rsplit("/", 1)[-1]]
    partial.write_text(json.dumps({**official, "images": listed}))
    assert find_instances_json(files) is None  # one image missing from the JSON
    assert find_instances_json(files[1:]) == partial
