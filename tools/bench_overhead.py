#!/usr/bin/env python
"""Wall-time overhead of pruning during training: Ultralytics' plain DetectionTrainer vs PruneTrainer, same model,
data, epochs and seed, measured in one invocation (this machine is noisy; compare the ratios).

    python tools/bench_overhead.py [--cfg yolov7-tiny.yaml] [--method effp] [--epochs 3] [--imgsz 160] [--rounds 1]

Three runs: plain training; pruning alone (the from-scratch defaults: masks, Taylor scores, the schedule); pruning
with what `--weights` runs of the method add by default: distillation from the dense starting model (a teacher forward
per batch) where the method keeps it (all but ASFP), and compensation (a covariance forward per pruning step) where
the method keeps it at this cut (EFFP: from 0.25; FP-AGL never). Defaults use the embedded demo dataset. Prints the
wall times and both ratios (goal for pruning alone <= 1.05; the cost of the `--weights` defaults is reported beside
it). `--rounds N` runs the three N times in turn and prints each round's ratios and their medians: on a noisy machine
one pair can be off by several percent.
"""

import argparse
import os
import statistics
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
    parser.add_argument("--rounds", type=int, default=1, help="run the three this many times in turn (medians)")
    args = parser.parse_args()

    from ultralytics.models.yolo.detect import DetectionTrainer

    # importing yolo_prune lets the plain trainer build our YAMLs
    from yolo_prune.demo_data import ensure_demo_dataset
    from yolo_prune.methods.schedule import PruneSettings
    from yolo_prune.nn.build import config_path
    from yolo_prune.train.trainer import PruneTrainer, default_compensate, default_distill
    data = args.data or str(ensure_demo_dataset())
    project = tempfile.mkdtemp(prefix="bench_overhead_")
    common = dict(model=str(config_path(args.cfg) or args.cfg), data=data, epochs=args.epochs, imgsz=args.imgsz,
                  batch=args.batch, workers=0, plots=False, seed=0, deterministic=True, project=project,
                  exist_ok=True, verbose=False)  # fmt: skip

    compensate = default_compensate(args.method, from_weights=True, cut=args.flops)
    distill = default_distill(args.method, from_weights=True, cut=args.flops)
    extras = [name for name, on in (("comp", compensate), ("distill", distill)) if on]
    weights_label = "+" + "+".join(extras or ["nothing"])

    def prune(extras: bool):
        settings = dict(compensate=compensate and extras, distill=1.0 if distill and extras else 0.0)
        return lambda name: PruneTrainer(overrides={**common, "name": name},
                                         prune=PruneSettings(flops=args.flops, method=args.method, **settings))

    makers = {"plain": lambda name: DetectionTrainer(overrides={**common, "name": name}),
              "prune": prune(False), weights_label: prune(True)}  # fmt: skip
    runs = {label: [] for label in makers}
    for _ in range(args.rounds):
        for label, make in makers.items():
            trainer = make(label)
            start = time.perf_counter()
            trainer.train()
            runs[label].append(time.perf_counter() - start)
    print(f"\n{args.cfg}, {args.epochs} epochs at {args.imgsz}, {args.method} --flops {args.flops}, data {data}")
    for label, seconds in runs.items():
        ratios = [s / p for s, p in zip(seconds, runs["plain"])]
        rest = "" if label == "plain" else "  ratio " + " ".join(f"{r:.3f}" for r in ratios)
        median = f"  (median {statistics.median(ratios):.3f})" if label != "plain" and args.rounds > 1 else ""
        print(f"{label:<14} " + " ".join(f"{s:7.1f}" for s in seconds) + f" s{rest}{median}")
    print(f"goal: prune / plain <= 1.05; {weights_label} / plain adds what --weights runs do by default")


if __name__ == "__main__":
    main()
