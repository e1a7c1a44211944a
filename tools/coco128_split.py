#!/usr/bin/env python
"""Write a held-out split of ../shared/data/coco128 as an Ultralytics dataset YAML (no images are copied).

    python tools/coco128_split.py OUT_DIR [--val 32]

The last `--val` images (sorted by name) are validation, the rest training; Ultralytics reads the two lists of
absolute image paths. coco128's own data.yaml trains and validates on the same 128 images.
"""

import argparse
from pathlib import Path

import yaml

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco128"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--val", type=int, default=32)
    parser.add_argument("--coco128", type=Path, default=SHARED)
    args = parser.parse_args()
    images = sorted((args.coco128 / "images" / "train2017").glob("*.jpg"))
    if not images:
        raise SystemExit(f"no images under {args.coco128}/images/train2017")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.txt").write_text("".join(f"{p}\n" for p in images[: -args.val]))
    (args.out / "val.txt").write_text("".join(f"{p}\n" for p in images[-args.val :]))
    names = yaml.safe_load((args.coco128 / "data.yaml").read_text())["names"]
    data = {"path": str(args.out), "train": "train.txt", "val": "val.txt", "names": names}
    (args.out / "coco128-split.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    print(args.out / "coco128-split.yaml", f"{len(images) - args.val} train / {args.val} val images")


if __name__ == "__main__":
    main()
