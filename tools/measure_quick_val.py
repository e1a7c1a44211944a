#!/usr/bin/env python
"""How well IW's per-step tolerance check (ctx.validate on the first N validation images) tracks the real validator.

    python tools/measure_quick_val.py --weights W [--data D] [--imgsz 160] [--cuts 0.05 0.1 0.2] [--images 16 32 0]

The model is cut step by step (folded-L1 order under the shared budget, as pruning steps would); at every cut the
mAP50-95 drop from the uncut model is measured by Ultralytics' validator on the whole validation set (standalone, on a
masked copy) and by the quick check on the first N images (0: all), with the time of one quick call. Default data:
the embedded demo dataset.
"""

from __future__ import annotations

import argparse
import time
from copy import deepcopy

from yolo_prune._ultralytics import go_offline


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data", default=None)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--cuts", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--images", type=int, nargs="+", default=[16, 32, 0])
    args = parser.parse_args()
    go_offline()
    from ultralytics.models.yolo.detect import DetectionValidator

    from yolo_prune.demo_data import ensure_demo_dataset
    from yolo_prune.graph.analyze import analyze
    from yolo_prune.masks.budget import Budget
    from yolo_prune.masks.mask import MaskSet
    from yolo_prune.methods.criteria import FoldedL1
    from yolo_prune.safe_load import load_checkpoint
    from yolo_prune.train.quick_val import QuickValidation

    model = load_checkpoint(args.weights)[0].float().eval()
    data = args.data or str(ensure_demo_dataset())
    graph = analyze(model, args.imgsz)
    budget, scores, base = Budget(graph), FoldedL1(graph)(model), graph.gflops()
    real = DetectionValidator(args=dict(data=data, imgsz=args.imgsz, batch=args.batch, plots=False, device="cpu",
                                        workers=0, verbose=False))  # fmt: skip
    masks, rows = MaskSet(graph), []
    for cut in [0.0] + args.cuts:
        if cut:
            masks = MaskSet(graph, budget.allocate(scores, base * (1 - cut), start=masks.masks))
        pruned = masks.apply(deepcopy(model))
        row = {"cut": cut, "full": real(model=pruned)["metrics/mAP50-95(B)"]}
        quick = QuickValidation(real.dataloader, real.data, real.args, "cpu", real.save_dir)
        for n in args.images:
            start = time.perf_counter()
            row[n] = quick(pruned, n)["metrics/mAP50-95(B)"]
            row[f"t{n}"] = time.perf_counter() - start
        rows.append(row)
    sizes = {n: quick.images(n) for n in args.images}
    header = f"{'cut':>5} {'full val':>15} " + " ".join(f"{f'first {sizes[n]}':>15} {'s/call':>6}" for n in args.images)
    print(f"mAP50-95 and its drop from the uncut model ({len(real.dataloader.dataset)} validation images)\n{header}")
    for r in rows:
        drop = {key: r[key] - rows[0][key] for key in ("full", *args.images)}
        cells = " ".join(f"{r[n]:7.3f} ({drop[n]:+.3f}) {r[f't{n}']:6.2f}" for n in args.images)
        print(f"{r['cut']:5.2f} {r['full']:7.3f} ({drop['full']:+.3f}) {cells}")


if __name__ == "__main__":
    main()
