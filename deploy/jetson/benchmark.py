#!/usr/bin/env python3
"""Time a TensorRT engine (or an ONNX file) on the device: warm-up, then timed runs of one fixed random batch.

    python3 benchmark.py --model slim.engine --runs 500 --out results/slim_bench.json

Times come from CUDA events around copy-in, execution and copy-out (the engine's real per-batch latency); the
results JSON holds median/p90/p99/mean and throughput plus the model facts from the export sidecar. For the
reference numbers of a paper table, lock the clocks first (`sudo nvpmodel -m <mode>` and `sudo jetson_clocks`) and
say which power mode was used.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import yolokit  # noqa: E402
from runtimes import load_runtime  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="TensorRT engine (.engine) or ONNX (.onnx)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the engine's)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--out", default=None, help="results JSON to write")
    return p.parse_args(argv)


def run(args) -> dict:
    model = load_runtime(args.model)
    batch = args.batch or model.input_shape[0]
    data = np.random.default_rng(0).random((batch,) + tuple(model.input_shape[1:]), dtype=np.float32)
    for _ in range(args.warmup):
        model(data)
    times = [model(data)[1] for _ in range(args.runs)]
    sidecar = yolokit.read_sidecar(args.model)
    result = yolokit.model_facts("jetson-bench", args.model, model.version, model.imgsz, sidecar)
    result.update(batch=batch, warmup=args.warmup, latency_ms=yolokit.summarize(times, batch))
    if args.out:
        yolokit.write_json(args.out, result)
    return result


def main(argv=None):
    result = run(parse_args(argv))
    lat = result["latency_ms"]
    print("%s (%s, batch %d): median %.3f ms, p90 %.3f, p99 %.3f, %.1f images/s"
          % (result["model"], result["precision"] or "?", result["batch"], lat["median_ms"], lat["p90_ms"],
             lat["p99_ms"], lat["throughput_ips"]))  # fmt: skip


if __name__ == "__main__":
    main()
