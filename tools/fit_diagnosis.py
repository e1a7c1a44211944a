#!/usr/bin/env python
"""Underfit or overfit? mAP of finished checkpoints on their training images and on held-out ones, and held-out mAP
after re-estimating every BatchNorm's statistics on the training images.

    python tools/fit_diagnosis.py runs/a/weights/best.pt [more.pt ...] [--split /tmp/c128split] [--imgsz 320]

`--split` is the folder `tools/coco128_split.py` writes (coco128-split.yaml, train.txt, val.txt). Prints, per
checkpoint, mAP50-95 / mAP50 held out, on the training images, and held out after the BatchNorm re-estimation (a
no-grad pass over the letterboxed training images in train mode with cumulative statistics).
"""

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", nargs="+")
    p.add_argument("--split", default="/tmp/c128split")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()

    from ultralytics import YOLO

    import yolo_prune  # noqa: F401  (our layers and checkpoints load in Ultralytics)

    split = Path(args.split)
    with tempfile.TemporaryDirectory(prefix="fit_diagnosis_") as tmp:
        on_train = Path(tmp) / "train-as-val.yaml"  # the same dataset, validated on its training list
        on_train.write_text((split / "coco128-split.yaml").read_text().replace("val: val.txt", "val: train.txt"))
        held_out = str(split / "coco128-split.yaml")
        print(f"{'checkpoint':<50}{'held-out':>16}{'train images':>16}{'held-out, BN re-est.':>24}")
        for w in args.weights:
            model = YOLO(w)
            a, b = _map(model, held_out, args), _map(model, str(on_train), args)
            c = _map(_reestimate_bn(YOLO(w), held_out, args), held_out, args)
            print(f"{w[-50:]:<50}{a:>16}{b:>16}{c:>24}")


def _map(model, data, args) -> str:
    r = model.val(data=data, imgsz=args.imgsz, batch=args.batch, workers=0, verbose=False, plots=False)
    return f"{r.box.map:.3f} / {r.box.map50:.3f}"


def _reestimate_bn(model, data: str, args):
    import torch

    from yolo_prune.export.calibration import calibration_array  # the train images, letterboxed as at inference

    net = model.model
    images = torch.from_numpy(calibration_array(data, 10**9, args.imgsz))
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    net.train()
    with torch.no_grad():
        for i in range(0, len(images), args.batch):
            net(images[i : i + args.batch])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    net.eval()
    return model


if __name__ == "__main__":
    main()
