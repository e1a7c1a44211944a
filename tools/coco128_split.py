#!/usr/bin/env python
"""Write a held-out split of ../shared/data/coco128 as an Ultralytics dataset YAML (no images are copied).

    python tools/coco128_split.py OUT_DIR [--val 32]

The last `--val` images (sorted by name) are validation, the rest training; coco128's own data.yaml trains and
validates on the same 128 images. Each split links its images and labels under OUT_DIR/images/<split> and
OUT_DIR/labels/<split>, so Ultralytics keeps one label cache per split there: listing the shared files directly makes
both splits rewrite the same cache inside ../shared (and two runs at once race on it). The tool writes both caches
itself, so runs started together on a fresh split find them ready.
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
    for split, files in (("train", images[: -args.val]), ("val", images[-args.val :])):
        linked = [_link(image, args.out / "images" / split) for image in files]
        for image in files:
            label = args.coco128 / "labels" / "train2017" / f"{image.stem}.txt"
            if label.exists():  # a few coco128 images have no objects, hence no label file
                _link(label, args.out / "labels" / split)
        (args.out / f"{split}.txt").write_text("".join(f"{p}\n" for p in linked))
    names = yaml.safe_load((args.coco128 / "data.yaml").read_text())["names"]
    data = {"path": str(args.out), "train": "train.txt", "val": "val.txt", "names": names}
    (args.out / "coco128-split.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    _cache_labels(args.out / "coco128-split.yaml")
    print(args.out / "coco128-split.yaml", f"{len(images) - args.val} train / {args.val} val images")


def _cache_labels(data: Path) -> None:
    """Write both splits' label caches now: runs started together on a fresh split would each write them, and
    Ultralytics' write (remove the old file if it exists, then save) races with a concurrent one: one run failed with
    FileNotFoundError on the file the other had just removed."""
    from yolo_prune.data import dataset_labels

    for split in ("train", "val"):
        dataset_labels(data, split)


def _link(target: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / target.name
    link.unlink(missing_ok=True)  # a re-run, possibly from another --coco128, links afresh
    link.symlink_to(target.resolve())
    return link


if __name__ == "__main__":
    main()
