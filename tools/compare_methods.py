#!/usr/bin/env python
"""Every pruning method against the baselines under one recipe, scored on held-out real images.

    python tools/compare_methods.py [--weights W] [--data D] [--cuts 0.2 0.37] [--seeds 0 1] [--methods ...]
                                    [--epochs 30] [--imgsz 320] [--batch 16] [--out runs/compare] [key=value ...]

Default: the COCO-pretrained YOLOv5n (../shared/data/yolov5n_coco) on the real coco128 split (tools/coco128_split.py:
96 train / 32 held-out val images). Each run is the plain command a user types, in its own process:
- `dense`: `yolo-prune train --weights W --flops 0` (the dense fine-tune every cut is compared with);
- in-training methods (every method of the registry that prunes in training: effp, asfp, ...; `uniform_train` and
  `random_train` are the in-training runs of the methods that are also one-shot baselines; `iw` runs under its
  default `--tolerance`, so it may stop before the cut, and `iw_cap` is iw held to the cut with `--tolerance 1`):
  `yolo-prune train --weights W --flops C --method M`;
- one-shot baselines (l1, uniform, random, and `tp`: Torch-Pruning group-L2 with a uniform ratio, when torch-pruning
  is installed, `pip install -e ".[bench]"`): prune W to the cut, then `yolo-prune train --weights pruned.pt --flops 0`;
- post-training (`damage`): `yolo-prune prune --method damage --data D`, scored as pruned; `damage_ft` is the same
  prune fine-tuned like the one-shot baselines (`--flops 0`; a one-shot prune fine-tunes with batch statistics by
  default).
Every final best.pt is validated on the held-out split by Ultralytics (mAP50-95, mAP50); GFLOPs by Ultralytics'
counter at 640. Results go to OUT/results.json as they finish (a re-run skips finished runs; a failed run is
reported with its log, left out, and retried by the next re-run), a table is printed and OUT/map_vs_gflops.png is
drawn. key=value arguments are passed to every training run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ONE_SHOT = ["l1", "uniform", "random", "tp"]
POST_TRAINING = ["damage"]  # one-shot methods that measure on the data: scored as they come out
FINE_TUNED = {"damage_ft": "damage"}  # ... and the same prunes fine-tuned


# extra runs of a method with options: iw under its tolerance stop (its own run) and held to the cut
# (research/methods.md 8.5: report the tolerance-constrained and the rate-constrained results separately)
VARIANTS = {"iw_cap": ("iw", ["--tolerance", "1"])}


def in_training_methods() -> dict[str, str]:
    """Run label -> method key, for every registered in-training method (new methods join automatically)."""
    from yolo_prune.methods import list_methods

    keys = list_methods(one_shot=False)
    runs = {f"{m}_train" if m in ONE_SHOT else m: m for m in keys}
    return {**runs, **{label: key for label, (key, _) in VARIANTS.items() if key in keys}}


def main():
    args = _parse()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = args.data or _coco128_split(out / "split")
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for seed in args.seeds:
        for method, cut in _plan(args.methods, args.cuts):
            key = f"{method}-{cut:g}-s{seed}"
            if key in results:
                continue
            try:
                results[key] = {"method": method, "cut": cut, "seed": seed,
                                **_run(method, cut, seed, data, out / key, args)}  # fmt: skip
            except _Skip as e:
                print(f"skipped {key}: {e}", flush=True)
                continue
            results_path.write_text(json.dumps(results, indent=1))
            print(f"{key}: {results[key]}", flush=True)
    print("\n" + table(results.values()))
    print(f"plot: {plot(results.values(), out / 'map_vs_gflops.png')}")


def _parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(SHARED / "yolov5n_coco" / "yolov5n.pt"))
    p.add_argument("--data", default=None, help="dataset YAML (default: the coco128 split, made under --out)")
    p.add_argument("--cuts", type=float, nargs="+", default=[0.2, 0.37])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    every = ["dense", *in_training_methods(), *ONE_SHOT, *POST_TRAINING, *FINE_TUNED]
    p.add_argument("--methods", nargs="+", default=every)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", default="runs/compare")
    p.add_argument("extra", nargs="*", help="key=value passed to every `yolo-prune train`")
    return p.parse_args()


def _plan(methods, cuts):
    for method in methods:
        for cut in [0.0] if method == "dense" else cuts:
            yield method, cut


def _coco128_split(folder: Path) -> str:
    subprocess.run([sys.executable, str(ROOT / "tools" / "coco128_split.py"), str(folder)], check=True)
    return str(folder / "coco128-split.yaml")


class _Skip(Exception):
    pass


def _run(method, cut, seed, data, folder: Path, args) -> dict:
    start = time.perf_counter()
    if method in POST_TRAINING:
        path = _post_training(method, cut, args.weights, data, folder.parent / f"{folder.name}.pt")
        return {**score(path, data, args.imgsz), "wall_s": round(time.perf_counter() - start, 1)}
    weights, flops, method_flag = args.weights, cut, []
    if method in FINE_TUNED:
        path = folder.parent / f"{folder.name}-start.pt"
        weights, flops = _post_training(FINE_TUNED[method], cut, args.weights, data, path), 0.0
    elif method in ONE_SHOT:
        weights, flops = _one_shot(method, cut, seed, args.weights, folder), 0.0
    elif method in in_training_methods():
        key = in_training_methods()[method]
        method_flag = ["--method", key] + (["--random-seed", str(seed)] if key == "random" else [])
        method_flag += VARIANTS.get(method, (key, []))[1]
    cmd = [sys.executable, "-m", "yolo_prune", "train", "--weights", str(weights), "--data", data,
           "--flops", str(flops), *method_flag, "--epochs", str(args.epochs), "--imgsz", str(args.imgsz),
           "--batch", str(args.batch), "--project", str(folder.parent), "--name", folder.name,
           f"seed={seed}", "workers=0", "val=False", "exist_ok=True", *args.extra]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder.parent / f"{folder.name}.log"
    with open(log_path, "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if code:  # one failed run should not cost the rest of the matrix; it is reported and left out of the table
        raise _Skip(f"the run failed (exit {code}); its log: {log_path}")
    wall = time.perf_counter() - start
    return {**score(folder / "weights" / "best.pt", data, args.imgsz), "wall_s": round(wall, 1)}


def _post_training(method, cut, weights, data, path: Path) -> Path:
    import yolo_prune.api as yp

    yp.prune(weights, flops=cut, method=method, imgsz=640, data=data, out=path)
    return path


def _one_shot(method, cut, seed, weights, folder: Path) -> Path:
    """The baseline's pruned starting point, written as an Ultralytics checkpoint."""
    path = folder.parent / f"{folder.name}-start.pt"
    if method == "tp":
        _torch_pruning(weights, cut, path)
        return path
    import yolo_prune.api as yp

    seed_option = {"random_seed": seed} if method == "random" else {}  # another draw per seed; the rest is fixed
    yp.prune(weights, flops=cut, method=method, imgsz=640, out=path, **seed_option)
    return path


def _torch_pruning(weights, cut, path: Path):
    """Torch-Pruning's group-L2 magnitude pruner with one uniform ratio, bisected to the FLOPs cut (+-0.01)."""
    try:
        import torch_pruning as tp
    except ImportError as e:
        raise _Skip("torch-pruning is not installed (pip install -e '.[bench]')") from e
    import torch
    from ultralytics.utils.torch_utils import get_flops

    from yolo_prune.checkpoint import save_checkpoint
    from yolo_prune.nn.build import load_model

    base = get_flops(load_model(weights), 640)
    lo, hi, model = 0.0, 0.9, None
    for _ in range(8):
        ratio = (lo + hi) / 2
        model = load_model(weights).float().train()
        pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 640, 640), pruning_ratio=ratio,
                                      importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      ignored_layers=[model.model[-1]])  # fmt: skip
        pruner.step()
        achieved = 1 - get_flops(model, 640) / base
        if abs(achieved - cut) < 0.01:
            break
        lo, hi = (ratio, hi) if achieved < cut else (lo, ratio)
    save_checkpoint(model, path, {"source": str(weights), "method": "torch-pruning group-L2", "ratio": ratio})


def score(best: Path, data: str, imgsz: int) -> dict:
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    model = YOLO(str(best))
    metrics = model.val(data=data, imgsz=imgsz, batch=16, plots=False, verbose=False, workers=0)
    return {"gflops": round(get_flops(model.model, 640), 3), "params": sum(p.numel() for p in model.model.parameters()),
            "map50_95": round(float(metrics.box.map), 4), "map50": round(float(metrics.box.map50), 4)}  # fmt: skip


def table(results) -> str:
    """One line per run, then the mean over seeds per method and cut."""
    rows = sorted(results, key=lambda r: (r["cut"], r["method"], r["seed"]))
    header = ("method", "cut", "seed", "GFLOPs", "params M", "mAP50-95", "mAP50", "wall s")
    lines = ["{:<14}{:>6}{:>5}{:>8}{:>10}{:>10}{:>8}{:>8}".format(*header)]
    lines += [f"{r['method']:<14}{r['cut']:>6.2f}{r['seed']:>5}{r['gflops']:>8.2f}{r['params'] / 1e6:>10.2f}"
              f"{r['map50_95']:>10.3f}{r['map50']:>8.3f}{r['wall_s']:>8.0f}" for r in rows]  # fmt: skip
    lines.append("\nmean over seeds")
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["cut"], r["method"]), []).append(r)
    for (cut, method), rs in groups.items():
        m = sum(r["map50_95"] for r in rs) / len(rs)
        spread = max(r["map50_95"] for r in rs) - min(r["map50_95"] for r in rs)
        lines.append(f"{method:<14}{cut:>6.2f}  n={len(rs)}  mAP50-95 {m:.3f} (range {spread:.3f})  "
                     f"mAP50 {sum(r['map50'] for r in rs) / len(rs):.3f}")  # fmt: skip
    return "\n".join(lines)


def plot(results, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.subplots()
    by_method: dict[str, list] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    for method, rs in sorted(by_method.items()):
        rs = sorted(rs, key=lambda r: r["gflops"])
        ax.scatter([r["gflops"] for r in rs], [r["map50_95"] for r in rs], label=method, s=18)
        means = {}
        for r in rs:
            means.setdefault(r["cut"], []).append(r)
        xs = [sum(r["gflops"] for r in v) / len(v) for v in means.values()]
        ys = [sum(r["map50_95"] for r in v) / len(v) for v in means.values()]
        ax.plot(*zip(*sorted(zip(xs, ys))), linewidth=1)
    ax.set_xlabel("GFLOPs at 640 (Ultralytics counter)")
    ax.set_ylabel("mAP50-95, held-out images")
    ax.set_title("Pruned and fine-tuned under one recipe (points: seeds, lines: means)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    main()
