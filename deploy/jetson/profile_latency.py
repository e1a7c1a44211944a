#!/usr/bin/env python3
"""Measure a model's latency table (lut.json) on the device with TensorRT: what yolo-prune prunes to with --lut.

    yolo-prune profile --model yolov7-tiny.yaml --imgsz 640 --plan plan/      # on the host: sites, widths, ONNX
    python3 profile_latency.py --plan plan/ --fp16 --out lut.json              # on the Jetson (or --int8)
    yolo-prune prune --model yolov7-tiny.yaml --latency 0.3 --backend tensorrt --lut lut.json --out slim.pt

The plan lists every prunable conv site of the model with the widths it can take; for each site and width this
builds the site's own graph (sitegraph.py, the same file yolo-prune uses), an engine of it, and times it (CUDA events
around the enqueue, as benchmark.py), in interleaved rounds with the full-width site as reference. Then the dense and
the probe (half-width) models of the plan are built and timed together. The table written is the format yolo-prune
reads (yolo_prune/latency/lut.py); the fit is done there. INT8 engines get fixed dynamic ranges instead of a
calibration (timing only). Builds share a TensorRT timing cache (`--timing-cache`), which makes the thousands of small
builds much faster; expect tens of minutes on a Xavier NX at 640 (use the host's `--step 16` for fewer widths).
`--runtime onnxruntime` runs the same measurement with ONNX Runtime instead (a check on any machine).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sitegraph  # noqa: E402
import yolokit  # noqa: E402
from runtimes import OnnxModel, TrtEngine  # noqa: E402

FORMAT, VERSION = "yolo-prune-latency", 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", required=True, help="folder written by `yolo-prune profile --plan`")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--int8", action="store_true", help="INT8 (with FP16 fallback), fixed ranges: timing only")
    p.add_argument("--runtime", choices=["tensorrt", "onnxruntime"], default="tensorrt")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=20, help="timed runs per graph (interleaved)")
    p.add_argument("--model-runs", type=int, default=100, help="timed runs of the dense and probe models")
    p.add_argument("--workspace", type=float, default=1.0, help="builder workspace in GiB")
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file (default: in the plan folder)")
    p.add_argument("--out", required=True, help="the table to write (lut.json)")
    return p.parse_args(argv)


def read_plan(folder: str) -> dict:
    """plan.json of the folder, checked enough to measure it (yolo-prune checks the finished table in full)."""
    path = os.path.join(folder, "plan.json")
    try:
        with open(path) as f:
            plan = json.load(f)
    except (OSError, ValueError) as e:
        message = "cannot read %s (%s): write it with `yolo-prune profile --plan %s`" % (path, e, folder)
        raise SystemExit(message) from None
    if not isinstance(plan, dict) or plan.get("format") != FORMAT or plan.get("version") != VERSION:
        raise SystemExit("%s is not a yolo-prune latency plan (format %s, version %d)" % (path, FORMAT, VERSION))
    if not isinstance(plan.get("sites"), list) or "probe" not in plan:
        raise SystemExit("%s has no sites or no probe: write it again with `yolo-prune profile --plan`" % path)
    for site in plan["sites"]:
        try:
            sitegraph.check_spec(site)
        except ValueError as e:
            raise SystemExit("%s: %s" % (path, e)) from None
    for name in ("dense.onnx", "probe.onnx"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise SystemExit("%s is missing from %s: write the plan again" % (name, folder))
    return plan


def precision(args) -> str:
    if args.runtime == "onnxruntime" and (args.fp16 or args.int8):
        raise SystemExit("--fp16/--int8 are TensorRT precisions; ONNX Runtime runs the FP32 graphs")
    return "int8" if args.int8 else "fp16" if args.fp16 else "fp32"


class Timer:
    """Opens a runtime for an ONNX file (building its engine first for TensorRT) and times runtimes interleaved."""

    def __init__(self, args, workdir: str):
        self.args, self.workdir, self.count = args, workdir, 0
        self.timing_cache = args.timing_cache or os.path.join(args.plan, "timing.cache")
        self.runtime = None

    def open(self, onnx_file: str):
        if self.args.runtime == "onnxruntime":
            model = OnnxModel(onnx_file)
        else:
            model = TrtEngine(self.build(onnx_file))
        self.runtime = model.version
        return model

    def build(self, onnx_file: str) -> str:
        import build_engine

        engine = os.path.splitext(onnx_file)[0] + ".engine"
        options = SimpleNamespace(onnx=onnx_file, engine=engine, fp16=self.args.fp16 or self.args.int8,
                                  int8=self.args.int8, timing_ranges=True, calib_images=None, batch=None,
                                  workspace=self.args.workspace, dla=None, timing_cache=self.timing_cache)  # fmt: skip
        build_engine.build(options)
        return engine

    def time(self, onnx_files, shapes, warmup: int, runs: int):
        """Median compute ms of each file, timed interleaved on fixed random input of its shape."""
        models = []
        try:
            for path in onnx_files:
                models.append(self.open(path))
            data = [np.random.default_rng(0).random(shape, dtype=np.float32) for shape in shapes]
            for model, x in zip(models, data):
                for _ in range(warmup):
                    model(x)
            times = [[] for _ in models]
            for _ in range(runs):
                for model, x, out in zip(models, data, times):
                    out.append(model(x)[1][0])
            return [float(np.median(t)) for t in times]
        finally:
            for model in models:
                model.close()

    def time_points(self, items, batch):
        """Median compute ms of the (site, cin, cout) graphs, timed interleaved."""
        files, shapes = [], []
        for site, cin, cout in items:
            self.count += 1
            path = os.path.join(self.workdir, "site%d.onnx" % self.count)
            with open(path, "wb") as f:
                f.write(sitegraph.site_graph(site, cin, cout, batch).SerializeToString())
            files.append(path)
            shapes.append((batch, cin) + tuple(site["in_hw"]))
        try:
            return self.time(files, shapes, self.args.warmup, self.args.runs)
        finally:
            for path in files:
                for name in (path, os.path.splitext(path)[0] + ".engine"):
                    if os.path.exists(name):
                        os.remove(name)


def measure(args) -> dict:
    plan = read_plan(args.plan)
    table = dict(plan, precision=precision(args))
    batch, (h, w) = plan["batch"], plan["imgsz"]
    with tempfile.TemporaryDirectory(prefix="profile_latency_") as workdir:
        timer = Timer(args, workdir)
        sitegraph.measure_sites(table, lambda items: timer.time_points(items, batch))
        models = [os.path.join(args.plan, name) for name in ("dense.onnx", "probe.onnx")]
        dense_ms, probe_ms = timer.time(models, [(batch, 3, h, w)] * 2, 10, args.model_runs)
    table["dense_ms"] = dense_ms
    table["probe"] = dict(plan["probe"], ms=probe_ms, dense_ms=dense_ms)
    table.update(backend=args.runtime, device=device_name(args.runtime, timer.runtime), warmup=args.warmup,
                 runs=args.runs, date=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))  # fmt: skip
    return table


def device_name(runtime: str, version: str) -> str:
    if runtime == "onnxruntime":
        return "%s on the host CPU (kit check)" % version
    import pycuda.driver as cuda

    return "%s on %s" % (version, cuda.Device(0).name())


def main(argv=None):
    args = parse_args(argv)
    table = measure(args)
    yolokit.write_json(args.out, table)
    print("wrote %s: %d conv sites, dense %.3f ms, probe %.3f ms (%s, %s)" % (
        args.out, len(table["sites"]), table["dense_ms"], table["probe"]["ms"], table["device"], table["precision"]))


if __name__ == "__main__":
    main()
