#!/usr/bin/env python
"""MSVFP's loss-aware search against its criterion alone, on the COCO-pretrained YOLOv5n, without training.

    python tools/bench_msvfp.py [--cut 0.15] [--imgsz 320] [--search-batches 1] [--candidates 6]

One pruning step from the dense model to `--cut` of its FLOPs, three ways, scored by the detection loss on held-out
images (the last 32 of ../shared/data/coco128, which the search never sees; it reads training images):
- `msvfp`: the loss-aware search (`methods/msvfp.py`) with the detection loss on `--search-batches` batches of 16;
- `criterion`: the same cuts chosen by the criterion alone (the search with a loss blind to the masks);
- `budget`: the shared budget's global allocation by folded L2 (what a plain magnitude method does).
Prints the held-out loss of each, the search's wall time and its loss evaluations.
"""

from __future__ import annotations

import argparse
import sys
import time
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"


def batches(images: list[Path], labels: Path, imgsz: int, size: int = 16) -> list[dict]:
    """Preprocessed training batches (the trainer's form: float images in [0, 1]), resized, with their labels."""
    from PIL import Image

    out = []
    for start in range(0, len(images), size):
        imgs, cls, boxes, index = [], [], [], []
        for i, path in enumerate(images[start : start + size]):
            imgs.append(np.asarray(Image.open(path).convert("RGB").resize((imgsz, imgsz)), np.float32) / 255)
            file = labels / f"{path.stem}.txt"
            rows = np.loadtxt(file, ndmin=2) if file.exists() and file.stat().st_size else np.zeros((0, 5))
            cls.append(rows[:, :1]), boxes.append(rows[:, 1:]), index.append(np.full(len(rows), i))
        out.append({"img": torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous(),
                    "cls": torch.from_numpy(np.concatenate(cls)).float(),
                    "bboxes": torch.from_numpy(np.concatenate(boxes)).float(),
                    "batch_idx": torch.from_numpy(np.concatenate(index)).float()})  # fmt: skip
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(SHARED / "yolov5n_coco" / "yolov5n.pt"))
    p.add_argument("--cut", type=float, default=0.15)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--search-batches", type=int, default=1)
    p.add_argument("--candidates", type=int, default=6)
    args = p.parse_args()

    from ultralytics.cfg import get_cfg

    from yolo_prune.masks.mask import MaskSet
    from yolo_prune.methods.criteria import FoldedL2
    from yolo_prune.methods.msvfp import LossAwareSearch, StepCriterion
    from yolo_prune.methods.settings import PruneSettings
    from yolo_prune.nn.build import load_model
    from yolo_prune.train.loss import detection_loss
    from yolo_prune.train.pruner import InTrainingPruner

    images = sorted((SHARED / "coco128" / "images" / "train2017").glob("*.jpg"))
    labels = SHARED / "coco128" / "labels" / "train2017"
    search = batches(images[: 16 * args.search_batches], labels, args.imgsz)  # training images
    held_out = batches(images[-32:], labels, args.imgsz)
    model = load_model(args.weights).float().eval()
    model.args = get_cfg()  # the loss gains, as the trainer sets them
    options = {"msvfp_batches": args.search_batches, "msvfp_candidates": args.candidates}
    settings = PruneSettings(flops=args.cut, method="msvfp", options=options).validate()
    pruner = InTrainingPruner(model, settings, epochs=1, loss=detection_loss)
    for b in search:
        pruner.cache(b)

    def held_out_loss(masks) -> float:
        return detection_loss(MaskSet(pruner.graph, masks).apply(deepcopy(model)), held_out)

    target = pruner.base_gflops * (1 - args.cut)
    ctx = pruner.context(step=0, target_gflops=target, progress=1.0)
    rows = {"dense": held_out_loss(pruner.graph.full_masks())}
    start = time.perf_counter()
    rows["msvfp"] = held_out_loss(pruner.method.prune_step(ctx).masks)
    wall, log = time.perf_counter() - start, dict(ctx.logged)
    blind = LossAwareSearch(pruner.budget, pruner.method.search.step, args.candidates)
    masks, _ = blind.run(pruner.graph.full_masks(), target, StepCriterion(pruner.method, ctx), lambda m: 0.0)
    rows["criterion"] = held_out_loss(masks)
    rows["budget"] = held_out_loss(pruner.budget.allocate(FoldedL2(pruner.graph)(model), target))
    print(f"YOLOv5n COCO, one step to -{args.cut:.0%} FLOPs at 640, no training; held-out detection loss per image "
          f"(32 coco128 images at {args.imgsz}):")  # fmt: skip
    for name, value in rows.items():
        print(f"  {name:<10} {value:8.3f}")
    print(f"msvfp search: {wall:.1f} s, {log['msvfp_evals']} loss evaluations on {args.search_batches} batch(es) of "
          f"16, {log['msvfp_commits']} commits: {log['msvfp_groups']}")  # fmt: skip


if __name__ == "__main__":
    main()
