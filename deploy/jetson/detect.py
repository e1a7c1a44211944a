#!/usr/bin/env python3
"""Detect objects in a folder of images with a TensorRT engine (or an ONNX file) and, given a COCO JSON, score them.

    python3 detect.py --model slim.engine --images val2017/ --out results/slim.json \
        --coco-json annotations/instances_val2017.json

Writes a results JSON (model facts from the export sidecar, settings, per-image latency statistics: `latency_ms`
compute only and `end_to_end_ms` with the copies, and the 12 COCO metrics when --coco-json is given) and, with
--save-detections, every detection in COCO result format. With --coco-json the
defaults switch to Ultralytics' mAP settings (conf 0.001, one box per class above it) unless --conf is given.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import yolokit  # noqa: E402
from runtimes import load_runtime  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="TensorRT engine (.engine) or ONNX (.onnx)")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--out", required=True, help="results JSON to write")
    p.add_argument("--coco-json", default=None, help="COCO instances JSON of these images: adds mAP")
    p.add_argument("--save-detections", default=None, help="also write all detections (COCO result JSON)")
    p.add_argument("--conf", type=float, default=None, help="score threshold (default 0.25; 0.001 with --coco-json)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--agnostic", action="store_true", help="class-agnostic NMS")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs before the first image")
    return p.parse_args(argv)


def run(args) -> dict:
    """Detect on every image; return the results dict (also written to --out)."""
    with load_runtime(args.model) as model:
        return _run(args, model)


def _run(args, model) -> dict:
    sidecar = yolokit.read_sidecar(args.model) or {}
    names = {int(k): v for k, v in sidecar.get("names", {}).items()}
    imgsz = model.imgsz
    evaluating = args.coco_json is not None
    conf = args.conf if args.conf is not None else (0.001 if evaluating else 0.25)
    settings = {"conf": conf, "iou": args.iou, "max_det": args.max_det, "agnostic": args.agnostic,
                "multi_label": evaluating}  # fmt: skip
    files = yolokit.list_images(args.images, args.limit)
    if not files:
        raise SystemExit("no images in %s" % args.images)
    warm = yolokit.preprocess(_read(files[0]), imgsz)[None]
    nc = model(warm)[0].shape[1] - 4
    names = names or {k: str(k) for k in range(nc)}
    for _ in range(args.warmup):
        model(warm)

    detections, infer_ms, pre_ms, post_ms = {}, [], [], []  # infer_ms: (compute, end-to-end) pairs
    for file in files:
        image = _read(file)
        t0 = time.perf_counter()
        batch = yolokit.preprocess(image, imgsz)[None]
        t1 = time.perf_counter()
        output, ms = model(batch)
        t2 = time.perf_counter()
        det = yolokit.decode(output[0], **settings)
        det[:, :4] = yolokit.scale_boxes(det[:, :4], imgsz, image.shape[:2])
        post_ms.append((time.perf_counter() - t2) * 1e3)
        pre_ms.append((t1 - t0) * 1e3)
        infer_ms.append(ms)
        detections[os.path.basename(file)] = det

    result = yolokit.model_facts("jetson-detect", args.model, model.version, imgsz, sidecar)
    result.update({
        "images": len(files),
        "detections": int(sum(len(d) for d in detections.values())),
        "settings": settings,
        **yolokit.latency_columns(infer_ms),
        "preprocess_ms": float(np.median(pre_ms)),
        "postprocess_ms": float(np.median(post_ms)),
    })
    if evaluating or args.save_detections:
        result.update(_coco(args, detections, names))
    yolokit.write_json(args.out, result)
    return result


def _coco(args, detections, names) -> dict:
    """COCO result entries for the detections; with --coco-json, their mAP over the processed images."""
    import json

    if args.coco_json:
        with open(args.coco_json) as f:
            gt = json.load(f)
        ids = {img["file_name"]: img["id"] for img in gt["images"]}
        missing = [name for name in detections if name not in ids]
        if missing:
            raise SystemExit("%d images are not in %s, e.g. %s" % (len(missing), args.coco_json, missing[0]))
        categories = yolokit.category_map(gt["categories"], names)
    else:  # no ground truth: image ids are positions, category ids are class index + 1
        ids = {name: i for i, name in enumerate(sorted(detections), 1)}
        categories = {k: k + 1 for k in names}
    results = yolokit.to_coco_results(detections, ids, categories)
    out = {}
    if args.save_detections:
        yolokit.write_json(args.save_detections, results)
        out["detections_file"] = os.path.abspath(args.save_detections)
    if args.coco_json:
        out["coco"] = yolokit.coco_map(args.coco_json, results, [ids[name] for name in detections])
        out["coco_json"] = os.path.abspath(args.coco_json)
    return out


def _read(file):
    import cv2

    image = cv2.imread(file)
    if image is None:
        raise SystemExit("cannot read image %s" % file)
    return image


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    lat, e2e = result["latency_ms"], result["end_to_end_ms"]
    print("%s: %d images, compute median %.2f ms (p90 %.2f, p99 %.2f), end-to-end median %.2f ms, %d detections -> %s"
          % (result["model"], result["images"], lat["median_ms"], lat["p90_ms"], lat["p99_ms"], e2e["median_ms"],
             result["detections"], os.path.abspath(args.out)))  # fmt: skip
    if "coco" in result:
        print("mAP50-95 %.4f  mAP50 %.4f" % (result["coco"]["AP50-95"], result["coco"]["AP50"]))


if __name__ == "__main__":
    main()
