"""Pre- and post-processing of yolo-prune / Ultralytics detection models in numpy, for the device.

Standalone on purpose: Python 3.8, numpy and OpenCV only (JetPack 5 has both); no torch, no Ultralytics. The model
input is (B, 3, H, W) float32 RGB in [0, 1], letterboxed (aspect kept, centred, grey 114 padding). Its output is
(B, 4 + nc, N): box centre x, y, width, height in input pixels, then nc class scores already passed through a sigmoid.
`decode` applies the same confidence filter and class-wise NMS as Ultralytics' predict (conf 0.25, IoU 0.7, at most
300 boxes), in float32 like Ultralytics, so the boxes agree with `model.predict` to well under a pixel.
"""

import json
import os
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

PAD_VALUE = 114
MAX_WH = 7680  # Ultralytics' class offset for class-wise NMS in one pass
MAX_NMS = 30000  # at most this many boxes (highest scores) enter NMS
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# ------------------------------------------------------------------------------------------------ pre-processing


def letterbox_geometry(shape: Tuple[int, int], imgsz: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(new_h, new_w, top, left) of an image of `shape` (h, w) resized into `imgsz` (h, w), as Ultralytics does."""
    h0, w0 = shape
    r = min(imgsz[0] / h0, imgsz[1] / w0)
    new_h, new_w = max(int(round(h0 * r)), 1), max(int(round(w0 * r)), 1)
    top = int(round((imgsz[0] - new_h) / 2 - 0.1))
    left = int(round((imgsz[1] - new_w) / 2 - 0.1))
    return new_h, new_w, top, left


def letterbox(image: np.ndarray, imgsz: Tuple[int, int]) -> np.ndarray:
    """Resize `image` (h, w, 3) keeping its aspect ratio and pad it to `imgsz` with grey 114, centred."""
    import cv2

    new_h, new_w, top, left = letterbox_geometry(image.shape[:2], imgsz)
    if (new_h, new_w) != image.shape[:2]:
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    bottom, right = imgsz[0] - new_h - top, imgsz[1] - new_w - left
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)


def preprocess(image_bgr: np.ndarray, imgsz: Tuple[int, int]) -> np.ndarray:
    """A BGR uint8 image (as cv2.imread gives) -> (3, h, w) float32 RGB in [0, 1], letterboxed."""
    rgb = letterbox(image_bgr, imgsz)[..., ::-1]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


# ----------------------------------------------------------------------------------------------- post-processing


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    out = np.empty_like(boxes)
    half_w, half_h = boxes[:, 2] / 2, boxes[:, 3] / 2
    out[:, 0], out[:, 1] = boxes[:, 0] - half_w, boxes[:, 1] - half_h
    out[:, 2], out[:, 3] = boxes[:, 0] + half_w, boxes[:, 1] + half_h
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes, highest score first; a box goes when its IoU with a kept one > `iou`."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou]
    return np.asarray(keep, dtype=np.int64)


def decode(output: np.ndarray, conf: float = 0.25, iou: float = 0.7, max_det: int = 300, agnostic: bool = False,
           multi_label: bool = False) -> np.ndarray:  # fmt: skip
    """One image's model output (4 + nc, N) -> (n, 6) rows [x1, y1, x2, y2, score, class] in input pixels.

    Args:
        output: the image's slice of the (B, 4 + nc, N) output.
        conf: keep scores above this (predict: 0.25; mAP evaluation: 0.001).
        iou: NMS IoU threshold.
        max_det: keep at most this many boxes.
        agnostic: one NMS over all classes instead of one per class.
        multi_label: a box may be kept for each class scoring above `conf` (Ultralytics' validation does this).
    """
    pred = np.ascontiguousarray(output.T, dtype=np.float32)  # (N, 4 + nc)
    pred = pred[pred[:, 4:].max(1) > conf]
    if not len(pred):
        return np.zeros((0, 6), np.float32)
    boxes, cls_scores = xywh_to_xyxy(pred[:, :4]), pred[:, 4:]
    if multi_label:
        rows, classes = np.nonzero(cls_scores > conf)
        boxes, scores = boxes[rows], cls_scores[rows, classes]
    else:
        classes = cls_scores.argmax(1)
        scores = cls_scores[np.arange(len(classes)), classes]
    if len(scores) > MAX_NMS:
        top = np.argsort(-scores, kind="stable")[:MAX_NMS]
        boxes, scores, classes = boxes[top], scores[top], classes[top]
    offsets = (classes * (0 if agnostic else MAX_WH)).astype(np.float32)[:, None]
    keep = nms(boxes + offsets, scores, iou)[:max_det]
    return np.concatenate([boxes[keep], scores[keep, None], classes[keep, None].astype(np.float32)], axis=1)


def scale_boxes(boxes: np.ndarray, imgsz: Tuple[int, int], shape: Tuple[int, int]) -> np.ndarray:
    """xyxy boxes in letterboxed input pixels -> original image pixels (h, w = `shape`), clipped to the image."""
    new_h, new_w, top, left = letterbox_geometry(shape, imgsz)
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] = (out[:, [0, 2]] - left) / np.float32(new_w / shape[1])
    out[:, [1, 3]] = (out[:, [1, 3]] - top) / np.float32(new_h / shape[0])
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, shape[1])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, shape[0])
    return out


def detect_image(run, image_bgr: np.ndarray, imgsz: Tuple[int, int], **decode_args) -> np.ndarray:
    """Detections (n, 6) [x1, y1, x2, y2, score, class] in original pixels; `run` maps a (1, 3, h, w) batch to the
    model output (1, 4 + nc, N)."""
    output = run(preprocess(image_bgr, imgsz)[None])
    det = decode(output[0], **decode_args)
    det[:, :4] = scale_boxes(det[:, :4], imgsz, image_bgr.shape[:2])
    return det


# ------------------------------------------------------------------------------------------------------- files


def list_images(folder: str, limit: Optional[int] = None) -> List[str]:
    """Image files in `folder` (not recursive), sorted by name."""
    if not os.path.isdir(folder):
        raise SystemExit("image folder not found: %s" % folder)
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
    return files[:limit] if limit else files


def read_sidecar(model_file: str) -> Optional[dict]:
    """The `<model file>.json` written by `yolo-prune export`, or None."""
    path = model_file + ".json"
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def model_facts(kind: str, model_file: str, runtime: str, imgsz, sidecar: Optional[dict]) -> dict:
    """The fields every kit results file starts with: which model, runtime and precision, and its size facts."""
    sidecar = sidecar or {}
    return {
        "kind": kind,
        "model": os.path.splitext(os.path.basename(model_file))[0],
        "model_file": os.path.abspath(model_file),
        "runtime": runtime,
        "precision": sidecar.get("precision"),
        "gflops": sidecar.get("gflops"),
        "params": sidecar.get("params"),
        "imgsz": list(imgsz),
        "source": sidecar.get("source"),
    }


def write_json(path: str, obj) -> None:
    """Write JSON through a temp file and a rename: the file is complete or absent, never half-written."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def summarize(times_ms: Sequence[float], batch: int = 1) -> Dict[str, float]:
    """Median, p90, p99, mean, min, max, std in ms and throughput (images/s, from the mean)."""
    t = np.asarray(times_ms, dtype=float)
    return {
        "runs": int(t.size), "median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean()), "min_ms": float(t.min()),
        "max_ms": float(t.max()), "std_ms": float(t.std()), "throughput_ips": batch * 1e3 / float(t.mean()),
    }  # fmt: skip


def latency_columns(times: Sequence[Tuple[float, float]], batch: int = 1) -> Dict[str, Dict[str, float]]:
    """{"latency_ms": compute summary, "end_to_end_ms": end-to-end summary} of (compute, end-to-end) pairs in ms."""
    compute, end_to_end = zip(*times)
    return {"latency_ms": summarize(compute, batch), "end_to_end_ms": summarize(end_to_end, batch)}


# -------------------------------------------------------------------------------------------------------- COCO

COCO_METRICS = ("AP50-95", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")  # fmt: skip


def category_map(categories: List[dict], names: Dict[int, str]) -> Dict[int, int]:
    """Class index -> COCO category id: by name when all names match, else the k-th id in ascending order."""
    by_name = {c["name"]: c["id"] for c in categories}
    if all(n in by_name for n in names.values()):
        return {int(k): by_name[n] for k, n in names.items()}
    if len(categories) == len(names):
        return dict(zip(sorted(int(k) for k in names), sorted(c["id"] for c in categories)))
    raise ValueError("the COCO JSON's categories match neither the model's class names nor their number")


def to_coco_results(detections: Dict[str, np.ndarray], image_ids: Dict[str, int],
                    categories: Dict[int, int]) -> List[dict]:  # fmt: skip
    """COCO result entries from {image file name: (n, 6) detections}."""
    results = []
    for name, det in detections.items():
        for x1, y1, x2, y2, score, cls in det.tolist():
            results.append({"image_id": image_ids[name], "category_id": categories[int(cls)],
                            "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                            "score": round(score, 5)})  # fmt: skip
    return results


def coco_map(gt_json: str, results: List[dict], image_ids: List[int]) -> Dict[str, float]:
    """pycocotools bbox metrics over `image_ids` (12 values by name)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes cannot take an empty list: an empty result set scores 0
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "annotations": [], "categories": gt.dataset["categories"]}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
    evaluator.summarize()  # printed: the familiar table
    return dict(zip(COCO_METRICS, (float(v) for v in evaluator.stats)))
