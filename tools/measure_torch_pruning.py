"""Measure Torch-Pruning's DependencyGraph against yolo_prune's own channel analysis on Ultralytics detectors.

Not a test and not a dependency: the numbers behind docs/engine-choice.md. Install Torch-Pruning outside the project:

    pip install --no-deps --target /tmp/tp torch-pruning==1.6.1
    YOLO_OFFLINE=1 python tools/measure_torch_pruning.py --tp-path /tmp/tp

Every measurement runs in its own child process under a wall-clock limit and an address-space limit (like
`timeout 300` + `ulimit -v 8000000`), so a runaway pruner is killed instead of taking the machine's memory. The child
prints one JSON line per finished phase, so a run killed during `step()` still reports its construction figures.
Torch-Pruning is skipped cleanly (engine reported as "missing") when it cannot be imported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

MODELS = ["yolov5nu.yaml", "yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"]
ENGINES = ["tp", "tp-unchunked", "tp-unchunked-noattn", "ours"]
IMGSZ = 640


# ----------------------------------------------------------------------------------------------- child process side


def _emit(**record):
    record["maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(record), flush=True)


def _build(cfg: str):
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    return DetectionModel(cfg, verbose=False)


def _gflops(model) -> float:
    from ultralytics.utils.torch_utils import get_flops

    return round(get_flops(model, IMGSZ), 3)


def _unchunk_c2f(model) -> int:
    """Replace the chunked `cv1` of every C2f (and subclasses such as C3k2) by two convs, one per half.

    This is the surgery Torch-Pruning's own YOLOv8 example does so its tracer never meets `Tensor.chunk`.
    Returns how many blocks were rewritten.
    """
    import copy
    import types

    import torch
    from ultralytics.nn.modules.block import C2f

    def forward(self, x):
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))

    count = 0
    for block in [m for m in model.modules() if isinstance(m, C2f)]:
        halves = []
        for part in (slice(0, block.c), slice(block.c, 2 * block.c)):
            conv = copy.deepcopy(block.cv1)
            conv.conv.weight = torch.nn.Parameter(block.cv1.conv.weight.data[part].clone())
            conv.conv.out_channels = block.c
            bn = conv.bn
            bn.weight = torch.nn.Parameter(bn.weight.data[part].clone())
            bn.bias = torch.nn.Parameter(bn.bias.data[part].clone())
            bn.running_mean = bn.running_mean[part].clone()
            bn.running_var = bn.running_var[part].clone()
            bn.num_features = block.c
            halves.append(conv)
        block.cv0, block.cv1 = halves
        block.forward = types.MethodType(forward, block)
        count += 1
    return count


def _forward_ok(model) -> str:
    import torch

    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, IMGSZ, IMGSZ))
    first = out[0] if isinstance(out, (list, tuple)) else out
    return f"ok {tuple(first.shape)}" if hasattr(first, "shape") else "ok"


def run_tp(cfg: str, unchunk: bool, skip_attention: bool):
    import torch
    import torch_pruning as tp
    from ultralytics.nn.modules.block import Attention

    model = _build(cfg)
    ignored = [model.model[-1]]  # Detect, as a new user does: its output convs must keep their widths
    if skip_attention:  # workaround: TP's reshape index mappings blow up on the attention block (see the docs)
        ignored += [m for m in model.modules() if isinstance(m, Attention)]
    params0, gflops0 = sum(p.numel() for p in model.parameters()), _gflops(model)
    rewritten = _unchunk_c2f(model) if unchunk else 0
    model.train()  # a freshly built model, as a new user hands it over (TP traces autograd: grads must be on)
    _emit(phase="built", params=params0, gflops=gflops0, c2f_rewritten=rewritten, ignored_attention=len(ignored) - 1)
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs=torch.randn(1, 3, IMGSZ, IMGSZ),
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.3,
        ignored_layers=ignored,
    )
    _emit(phase="construct", seconds=round(time.perf_counter() - t0, 2))
    t0 = time.perf_counter()
    pruner.step()
    _emit(phase="step", seconds=round(time.perf_counter() - t0, 2))
    params1 = sum(p.numel() for p in model.parameters())
    _emit(phase="forward", result=_forward_ok(model), params=params1, gflops=_gflops(model))


def run_ours(cfg: str):
    from yolo_prune.graph.analyze import analyze

    model = _build(cfg)
    _emit(phase="built", params=sum(p.numel() for p in model.parameters()), gflops=_gflops(model))
    t0 = time.perf_counter()
    graph = analyze(model, IMGSZ)
    seconds = round(time.perf_counter() - t0, 2)
    _emit(phase="analyze", seconds=seconds, groups=len(graph.groups), predicted_gflops=round(graph.gflops(), 3))


def child(engine: str, cfg: str):
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)  # comparable timings on a shared box
    if engine == "ours":
        run_ours(cfg)
    else:
        run_tp(cfg, unchunk=engine.startswith("tp-unchunked"), skip_attention=engine.endswith("noattn"))


# ---------------------------------------------------------------------------------------------- parent process side


def measure(engine: str, cfg: str, timeout: float, mem_kb: int, tp_path: str | None) -> dict:
    """Run one child under the limits; return its phases plus wall time, peak RSS and how it ended."""
    env = dict(os.environ, YOLO_OFFLINE="1")
    if tp_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [tp_path, env.get("PYTHONPATH")]))

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (mem_kb * 1024, mem_kb * 1024))
        os.setsid()

    cmd = [sys.executable, __file__, "--child", engine, cfg]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit, text=True)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - t0 > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(proc.pid, 0)
            timed_out = True
            break
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    phases = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    error = next((ln for ln in reversed(stderr.strip().splitlines()) if ln.strip()), "") if proc.returncode else ""
    return {
        "model": cfg,
        "engine": engine,
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "exit": "timeout" if timed_out else proc.returncode,
        "error": error[-300:],
        "phases": phases,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=2, metavar=("ENGINE", "CFG"), help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--engines", nargs="+", default=ENGINES, choices=ENGINES)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per run (default 300)")
    ap.add_argument("--mem-kb", type=int, default=8_000_000, help="address-space limit per run (default 8000000)")
    ap.add_argument("--tp-path", default=None, help="folder holding torch_pruning (pip install --target)")
    ap.add_argument("--out", type=Path, default=None, help="write all results to this JSON file")
    args = ap.parse_args()
    if args.child:
        return child(*args.child)

    env_path = [args.tp_path] if args.tp_path else []
    probe = subprocess.run(
        [sys.executable, "-c", "import torch_pruning"],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(env_path + [os.environ.get("PYTHONPATH", "")])),
        capture_output=True,
    )
    engines = args.engines
    if probe.returncode:
        print("torch_pruning not importable: measuring only our analysis (pass --tp-path)", file=sys.stderr)
        engines = [e for e in engines if e == "ours"]
    results = []
    for cfg in args.models:
        for engine in engines:
            r = measure(engine, cfg, args.timeout, args.mem_kb, args.tp_path)
            results.append(r)
            print(json.dumps(r), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
