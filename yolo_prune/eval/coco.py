"""COCO mAP with pycocotools for any YOLO-format dataset, printed beside Ultralytics' own mAP.

One Ultralytics validation pass (conf 0.001, iou 0.7, max_det 300, the usual mAP settings) gives Ultralytics' metrics
and the detections; the detections, mapped back to original-image pixels, are then scored by pycocotools against:

- the dataset's official COCO instances JSON (`<root>/annotations/instances_<split>*.json`) when one covers every
  evaluated image: the standard COCO protocol, with crowd regions ignored and object sizes taken from mask areas;
- otherwise a COCO JSON built from the YOLO labels: pixel boxes, box areas, no crowd regions.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import YoloPruneError

# pycocotools' COCOeval.stats, in its order
COCO_METRICS = (
    "AP50-95", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip


def evaluate(model, data=None, imgsz=640, batch=16, json_out=None) -> dict:
    """pycocotools' 12 COCO metrics and Ultralytics' mAP of `model` on the val split of `data`.

    Args:
        model: model name, YAML, checkpoint path or DetectionModel (see `yolo_prune.nn.build.load_model`); a YAML
            is built with the dataset's number of classes.
        data: Ultralytics dataset YAML; None uses the embedded demo dataset.
        imgsz: inference size (multiple of the model stride).
        batch: validation batch size.
        json_out: also write the result to this JSON file.

    Returns:
        dict with `pycocotools` (the 12 metrics by name), `ultralytics` (mAP50-95, mAP50, precision, recall),
        `ground_truth` (which ground truth was used and why) and counts.
    """
    from ..data import dataset_yaml, load_dataset, ultralytics_yaml

    if int(imgsz) < 32 or int(batch) < 1:
        raise YoloPruneError(f"imgsz must be >= 32 and batch >= 1 (got imgsz={imgsz}, batch={batch}).")
    data_file = dataset_yaml(data)
    with ultralytics_yaml(data_file) as yaml_file:
        names = load_dataset(yaml_file)["names"]
        net = _load_for_dataset(model, len(names))
        collector, ultralytics_stats = _validate(net, yaml_file, int(imgsz), int(batch))
    labels = collector.dataloader.dataset.labels
    gt, image_ids, class_to_category, gt_info = choose_ground_truth(labels, names)
    detections = detections_to_coco(collector.detections, image_ids, class_to_category)
    metrics, summary = coco_metrics(gt, detections, sorted(set(image_ids.values())))
    result = {
        "model": str(model) if isinstance(model, (str, Path)) else type(model).__name__,
        "data": str(data_file),
        "imgsz": int(imgsz),
        "images": len(image_ids),
        "instances": sum(not a.get("iscrowd", 0) for a in gt["annotations"]),
        "detections": len(detections),
        "ground_truth": gt_info,
        "mAP50-95": metrics["AP50-95"],
        "mAP50": metrics["AP50"],
        "pycocotools": metrics,
        "ultralytics": {
            "mAP50-95": ultralytics_stats["metrics/mAP50-95(B)"],
            "mAP50": ultralytics_stats["metrics/mAP50(B)"],
            "precision": ultralytics_stats["metrics/precision(B)"],
            "recall": ultralytics_stats["metrics/recall(B)"],
        },
        "summary": summary,
    }
    if json_out:
        from ..export.files import write_json

        write_json(json_out, result)
    return result


def format_report(result: dict) -> str:
    """The pycocotools summary, then mAP from pycocotools and from Ultralytics side by side."""
    ul, pc = result["ultralytics"], result["pycocotools"]
    gt = result["ground_truth"]
    lines = [
        result["summary"].rstrip(),
        "",
        f"ground truth: {gt['source']} ({gt['note']})",
        f"{result['images']} images, {result['instances']} instances, {result['detections']} detections",
        f"{'':<10}{'pycocotools':>13}{'ultralytics':>13}",
        f"{'mAP50-95':<10}{pc['AP50-95']:>13.4f}{ul['mAP50-95']:>13.4f}",
        f"{'mAP50':<10}{pc['AP50']:>13.4f}{ul['mAP50']:>13.4f}",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- ground truth


def ground_truth_from_labels(labels: list[dict], names: dict) -> tuple[dict, dict]:
    """A COCO ground truth built from Ultralytics' parsed YOLO labels.

    Args:
        labels: Ultralytics dataset labels (`im_file`, `shape` (h, w), `cls` (n, 1), `bboxes` (n, 4) normalised xywh).
        names: class index -> name; class k gets category id k + 1.

    Returns:
        (COCO dict, {image file: image id}). Image ids are the file stems when all are distinct integers (COCO's own
        numbering), else 1..N.
    """
    files = [lb["im_file"] for lb in labels]
    root = os.path.commonpath([str(Path(f).parent) for f in files]) if files else ""
    stems = [Path(f).stem for f in files]
    numeric = all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems)
    image_ids = {f: int(s) if numeric else i for i, (f, s) in enumerate(zip(files, stems), 1)}
    images, annotations = [], []
    for lb in labels:
        h, w = (int(v) for v in lb["shape"])
        image_id = image_ids[lb["im_file"]]
        name = Path(os.path.relpath(lb["im_file"], root)).as_posix()
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        if lb.get("bbox_format", "xywh") != "xywh" or not lb.get("normalized", True):
            raise AssertionError("Ultralytics detection labels are normalised xywh")
        for c, (cx, cy, bw, bh) in zip(np.asarray(lb["cls"]).reshape(-1), np.asarray(lb["bboxes"]).reshape(-1, 4)):
            box = [float((cx - bw / 2) * w), float((cy - bh / 2) * h), float(bw * w), float(bh * h)]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(c) + 1,
                "bbox": box, "area": box[2] * box[3], "iscrowd": 0,
            })  # fmt: skip
    categories = [{"id": int(k) + 1, "name": str(v)} for k, v in sorted(names.items())]
    info = {"description": "built by yolo-prune from YOLO labels"}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}, image_ids


def find_instances_json(image_files: list[str]) -> Path | None:
    """The dataset's official `annotations/instances_<split>*.json` that lists every one of `image_files`."""
    folder = Path(os.path.commonpath([str(Path(f).parent) for f in image_files]))
    root = folder.parent.parent if folder.parent.name == "images" else folder.parent
    wanted = {Path(f).name for f in image_files}
    for candidate in sorted((root / "annotations").glob(f"instances_{folder.name}*.json")):
        with open(candidate) as f:
            listed = {img["file_name"] for img in json.load(f).get("images", [])}
        if wanted <= listed:
            return candidate
    return None


def category_map(categories: list[dict], names: dict) -> dict[int, int] | None:
    """Class index -> COCO category id: by name when all names match, else k-th id in ascending order, else None."""
    by_name = {c["name"]: c["id"] for c in categories}
    if all(n in by_name for n in names.values()):
        return {int(k): by_name[n] for k, n in names.items()}
    if len(categories) == len(names):
        return dict(zip(sorted(int(k) for k in names), sorted(c["id"] for c in categories)))
    return None


def choose_ground_truth(labels: list[dict], names: dict) -> tuple[dict, dict, dict, dict]:
    """The official COCO JSON when it covers the images and its categories map to the classes, else the labels.

    Returns:
        (COCO dict, {image file: image id}, {class index: category id}, {source, file, note}).
    """
    files = [lb["im_file"] for lb in labels]
    official = find_instances_json(files) if files else None
    if official:
        with open(official) as f:
            gt = json.load(f)
        mapping = category_map(gt["categories"], names)
        if mapping is not None:
            ids = {img["file_name"]: img["id"] for img in gt["images"]}
            image_ids = {f: ids[Path(f).name] for f in files}
            keep = set(image_ids.values())  # a JSON of a larger split: evaluate only the images we ran on
            gt = {**gt, "images": [i for i in gt["images"] if i["id"] in keep]}
            gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
            note = "official COCO protocol: crowd regions ignored, object sizes from mask areas"
            return gt, image_ids, mapping, {"source": "official", "file": str(official), "note": note}
    gt, image_ids = ground_truth_from_labels(labels, names)
    note = "built from the YOLO labels: pixel boxes, box areas, no crowd regions"
    if official:
        note += f"; {official.name} was found but its categories do not match the dataset names"
    return gt, image_ids, {int(k): int(k) + 1 for k in names}, {"source": "labels", "file": None, "note": note}


# ------------------------------------------------------------------------------------------- detections, scoring


def detections_to_coco(detections, image_ids: dict, class_to_category: dict) -> list[dict]:
    """COCO result entries from per-image `(image file, xyxy pixel boxes (n, 4), scores (n,), classes (n,))`.

    Classes without a category (a model with more classes than the ground truth) are dropped: pycocotools would
    ignore them anyway, as it only scores the ground truth's categories.
    """
    results = []
    for file, boxes, scores, classes in detections:
        image_id = image_ids[file]
        for (x1, y1, x2, y2), score, cls in zip(np.asarray(boxes, float).reshape(-1, 4), scores, classes):
            category = class_to_category.get(int(cls))
            if category is not None:
                box = [round(float(x1), 3), round(float(y1), 3), round(float(x2 - x1), 3), round(float(y2 - y1), 3)]
                results.append({"image_id": image_id, "category_id": category, "bbox": box, "score": float(score)})
    return results


def coco_metrics(gt, detections, image_ids=None) -> tuple[dict, str]:
    """pycocotools bbox evaluation.

    Args:
        gt: COCO ground truth dict or JSON path.
        detections: list of COCO result entries, or a JSON path to one.
        image_ids: evaluate these images (default: all ground-truth images).

    Returns:
        ({metric name: value} for the 12 `COCO_METRICS`, pycocotools' printed summary). A metric pycocotools cannot
        define (no ground truth in that size range) is -1, as pycocotools reports it.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_dict = _load_json(gt, "ground truth")
    dets = _load_json(detections, "detections")
    if not isinstance(dets, list):
        raise YoloPruneError("A COCO detection file must hold a JSON list of {image_id, category_id, bbox, score}.")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # pycocotools prints progress; keep only the summary table
        coco_gt = COCO()
        coco_gt.dataset = gt_dict
        coco_gt.createIndex()
        unknown = {d["image_id"] for d in dets} - set(coco_gt.getImgIds())
        if unknown:
            raise YoloPruneError(f"Detections name image ids absent from the ground truth, e.g. {sorted(unknown)[:3]}.")
        coco_dt = coco_gt.loadRes([dict(d) for d in dets]) if dets else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        out.seek(0)
        out.truncate()
        evaluator.summarize()
    return dict(zip(COCO_METRICS, (float(v) for v in evaluator.stats))), out.getvalue()


def _empty_results(coco_gt):
    """A result set with no detections (pycocotools' loadRes cannot take an empty list); every AP is then 0."""
    from pycocotools.coco import COCO

    res = COCO()
    res.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                   "categories": list(coco_gt.dataset["categories"])}  # fmt: skip
    res.createIndex()
    return res


def _load_json(obj, what: str):
    if not isinstance(obj, (str, Path)):
        return obj
    try:
        with open(obj) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise YoloPruneError(f"Cannot read the {what} JSON '{obj}': {e}") from None


# ------------------------------------------------------------------------------------------ validation pass


def _load_for_dataset(model, nc: int):
    """The model as a float32 DetectionModel; a YAML is built for the dataset's classes, others must match them."""
    from ..nn.build import load_model

    from_yaml = isinstance(model, (str, Path)) and str(model).endswith((".yaml", ".yml"))
    net = load_model(model, nc=nc if from_yaml else None)
    if len(net.names) != nc:
        raise YoloPruneError(
            f"The model predicts {len(net.names)} classes but the dataset has {nc}; evaluate it on the dataset it "
            "was trained for."
        )
    return net


def _validate(net, yaml_file: Path, imgsz: int, batch: int):
    """Run Ultralytics' DetectionValidator once; return it (holding the detections) and Ultralytics' stats."""
    import copy

    from ultralytics.models.yolo.detect import DetectionValidator

    class CollectingValidator(DetectionValidator):
        """Ultralytics' validator that also keeps every image's detections in original-image pixels."""

        def init_metrics(self, model):
            super().init_metrics(model)
            self.detections = []

        def update_metrics(self, preds, batch):
            super().update_metrics(preds, batch)
            for si, pred in enumerate(preds):
                pbatch = self._prepare_batch(si, batch)
                boxes = self.scale_preds(pred, pbatch)["bboxes"]
                self.detections.append((pbatch["im_file"], boxes.cpu().numpy(), pred["conf"].cpu().numpy(),
                                        pred["cls"].cpu().numpy()))  # fmt: skip

    # save_json/val off: Ultralytics would otherwise score COCO itself with faster-coco-eval (a pip install)
    args = dict(data=str(yaml_file), imgsz=imgsz, batch=batch, plots=False, save_json=False, val=False,
                verbose=False, mode="val")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="yolo_prune_val_") as save_dir:
        validator = CollectingValidator(args=args, save_dir=Path(save_dir))
        stats = validator(model=copy.deepcopy(net))  # AutoBackend fuses the module it is given: keep the caller's
    return validator, stats
