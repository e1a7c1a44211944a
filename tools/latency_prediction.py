#!/usr/bin/env python
"""Prediction error of a latency table, and latency- vs FLOPs-targeted one-shot pruning, measured in one run.

    python tools/latency_prediction.py --model yolov8n.yaml --lut lut.json --imgsz 320 [--latency 0.3 0.2]
        [--flops 0.3] [--runs 60] [--out /tmp/latency/pred]

Prunes the model one-shot (l1) to each --latency target with the table and to each --flops target, then times the
dense model and all pruned ones interleaved in one `yolo-prune bench` run (ONNX Runtime, batch 1). Prints per model
the predicted latency (table), the measured median, the error, and the predicted and measured latency cuts against
the dense model, with the machine load (`uptime`) before and after.
"""

import argparse
import os
import subprocess
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--lut", required=True)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--latency", type=float, nargs="*", default=[0.3])
    p.add_argument("--flops", type=float, nargs="*", default=[])
    p.add_argument("--runs", type=int, default=60)
    p.add_argument("--out", default="/tmp/latency_prediction")
    args = p.parse_args()

    from yolo_prune.api import prune
    from yolo_prune.bench import benchmark
    from yolo_prune.graph.analyze import analyze
    from yolo_prune.latency.cost import LatencyCost
    from yolo_prune.latency.lut import LatencyTable
    from yolo_prune.nn.build import load_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = LatencyTable.load(args.lut)
    models, predicted = [args.model], [table.dense_ms]
    for kind, cuts in (("latency", args.latency), ("flops", args.flops)):
        for cut in cuts:
            file = out / f"{Path(args.model).stem}-{kind}{cut}.pt"
            prune(args.model, imgsz=args.imgsz, out=file, **({"latency": cut, "lut": args.lut} if kind == "latency"
                                                               else {"flops": cut}))  # fmt: skip
            slim = load_model(file)
            cost = LatencyCost(analyze(load_model(args.model), args.imgsz), table)
            predicted.append(cost.total(_widths_masks(cost.graph, slim, args.imgsz)))
            models.append(str(file))
    print("load before:", _uptime())
    rows = benchmark(models, imgsz=args.imgsz, warmup=10, runs=args.runs)["models"]
    print("load after: ", _uptime())
    base = rows[0]["latency"]["median_ms"]
    print(f"{'model':<40}{'GFLOPs':>8}{'pred ms':>10}{'meas ms':>10}{'error':>8}{'pred cut':>10}{'meas cut':>10}")
    for row, pred in zip(rows, predicted):
        meas = row["latency"]["median_ms"]
        print(f"{Path(row['model']).name:<40}{row['gflops']:>8.2f}{pred:>10.2f}{meas:>10.2f}{pred / meas - 1:>+8.1%}"
              f"{1 - pred / predicted[0]:>10.3f}{1 - meas / base:>10.3f}")


def _widths_masks(graph, slim, imgsz):
    """Masks of the dense graph with each group cut to the slim model's width (the first channels: only the
    counts matter for the prediction)."""
    import numpy as np

    slim_graph = analyze_widths(slim, imgsz)
    return {g.name: np.arange(g.width) < slim_graph.get(g.name, g.width) for g in graph.groups}


def analyze_widths(model, imgsz) -> dict:
    from yolo_prune.graph.analyze import analyze

    return {g.name: g.width for g in analyze(model, imgsz).groups}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
