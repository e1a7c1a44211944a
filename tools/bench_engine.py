#!/usr/bin/env python
"""Time the pruning engine on this machine: analyse (trace + cost model), allocate a 37 % FLOPs cut, slim.

    python tools/bench_engine.py [MODEL ...]

Prints one row per model; each phase is the best of --repeat runs (this machine is noisy).
"""

import argparse
import os
import time
from functools import partial

os.environ.setdefault("YOLO_OFFLINE", "1")

MODELS = ["yolov5nu.yaml", "yolov8n.yaml", "yolov8s.yaml", "yolo11n.yaml", "yolo26n.yaml", "yolov7-tiny.yaml",
          "yolov7.yaml"]  # fmt: skip


def best_of(repeat, fn):
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=MODELS)
    parser.add_argument("--flops", type=float, default=0.37)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import torch

    from yolo_prune.graph.analyze import analyze
    from yolo_prune.masks.budget import Budget
    from yolo_prune.methods.criteria import folded_l1
    from yolo_prune.nn.build import load_model
    from yolo_prune.slim.slim import slim

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':<18}{'GFLOPs':>9}{'groups':>8}{'analyse s':>11}{'allocate s':>12}{'slim s':>9}{'total s':>9}")
    for name in args.models:
        model = load_model(name)
        t_analyse, graph = best_of(args.repeat, partial(analyze, model, 640))
        budget = Budget(graph)
        t_alloc, masks = best_of(args.repeat, partial(budget.allocate, folded_l1(model, graph),
                                                      graph.gflops() * (1 - args.flops)))  # fmt: skip
        t_slim, _ = best_of(args.repeat, partial(slim, model, graph, masks))
        total = t_analyse + t_alloc + t_slim
        print(f"{name:<18}{graph.gflops():>9.2f}{len(graph.groups):>8}{t_analyse:>11.3f}{t_alloc:>12.3f}"
              f"{t_slim:>9.3f}{total:>9.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
