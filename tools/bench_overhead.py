#!/usr/bin/env python
"""Wall-time overhead of pruning during training: PruneTrainer (EFFP/ASFP) vs Ultralytics' plain DetectionTrainer,
same model, data, epochs and seed, measured in one invocation (this machine is noisy; compare the ratio).

    python tools/bench_overhead.py [--cfg yolov7-tiny.yaml] [--method effp] [--epochs 3] [--imgsz 160]

Defaults use the embedded demo dataset. Prints both wall times and the ratio (goal <= 1.05).
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("YOLO_OFFLINE", "1")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", default="yolov7-tiny.yaml")
    parser.add_argument("--method", default="effp")
    parser.add_argument("--flops", type=float, default=0.37)
    parser.add_argument("--data", default=None, help="dataset YAML (default: the embedded demo dataset)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    from ultralytics.models.yolo.detect import DetectionTrainer

    from yolo_prune._ultralytics import go_offline
    from yolo_prune.demo_data import ensure_demo_dataset
    from yolo_prune.methods.schedule import PruneSettings
    from yolo_prune.nn.build import config_path
    from yolo_prune.nn.register import register_modules
    from yolo_prune.train.trainer import PruneTrainer

    go_offline()
    register_modules()  # so the plain trainer can build our YOLOv7 YAMLs too
    data = args.data or str(ensure_demo_dataset())
    project = tempfile.mkdtemp(prefix="bench_overhead_")
    common = dict(model=str(config_path(args.cfg) or args.cfg), data=data, epochs=args.epochs, imgsz=args.imgsz,
                  batch=args.batch, workers=0, plots=False, seed=0, deterministic=True, project=project,
                  exist_ok=True, verbose=False)  # fmt: skip

    runs = {}
    for label, make in (
        ("plain", lambda: DetectionTrainer(overrides={**common, "name": "plain"})),
        (args.method, lambda: PruneTrainer(overrides={**common, "name": "prune"},
                                           prune=PruneSettings(flops=args.flops, method=args.method))),
    ):  # fmt: skip
        trainer = make()
        start = time.perf_counter()
        trainer.train()
        runs[label] = time.perf_counter() - start
    plain, pruned = runs["plain"], runs[args.method]
    print(f"\n{args.cfg}, {args.epochs} epochs at {args.imgsz}, data {data}")
    print(f"plain train  {plain:8.1f} s")
    print(f"{args.method} train   {pruned:8.1f} s  (--flops {args.flops})")
    print(f"overhead ratio {pruned / plain:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
