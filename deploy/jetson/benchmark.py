#!/usr/bin/env python3
"""Time a TensorRT engine (or an ONNX file) on the device: warm-up, then timed runs of one fixed random batch.

    python3 benchmark.py --model slim.engine --runs 500 --out results/slim_bench.json

Two timings per batch, from CUDA events: `latency_ms`, the engine's compute alone (events around the enqueue; what
trtexec calls GPU Compute Time), and `end_to_end_ms`, which adds copying the input in and the output back. The
results JSON holds median/p90/p99/mean and throughput of both, the batch the engine really ran, and the model facts
from the export sidecar. For the reference numbers of a paper table, lock the clocks first (`sudo nvpmodel -m <mode>`
and `sudo jetson_clocks`) and say which power mode was used.
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
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the engine's, or its largest)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--out", default=None, help="results JSON to write")
    return p.parse_args(argv)


def run(args) -> dict:
    with load_runtime(args.model, args.batch) as model:
        batch, version, imgsz = model.batch, model.version, model.imgsz  # the batch the engine really runs
        data = np.random.default_rng(0).random((batch,) + tuple(model.input_shape[1:]), dtype=np.float32)
        for _ in range(args.warmup):
            model(data)
        times = [model(data)[1] for _ in range(args.runs)]
    sidecar = yolokit.read_sidecar(args.model)
    result = yolokit.model_facts("jetson-bench", args.model, version, imgsz, sidecar)
    result.update(batch=batch, warmup=args.warmup, **yolokit.latency_columns(times, batch))
    if args.out:
        yolokit.write_json(args.out, result)
    return result


def main(argv=None):
    result = run(parse_args(argv))
    lat, e2e = result["latency_ms"], result["end_to_end_ms"]
    print("%s (%s, batch %d): compute median %.3f ms, p90 %.3f, p99 %.3f, %.1f images/s; end-to-end median %.3f ms, "
          "p90 %.3f, %.1f images/s" % (result["model"], result["precision"] or "?", result["batch"], lat["median_ms"],
                                        lat["p90_ms"], lat["p99_ms"], lat["throughput_ips"], e2e["median_ms"],
                                        e2e["p90_ms"], e2e["throughput_ips"]))  # fmt: skip


if __name__ == "__main__":
    main()
