"""tools/coco128_split.py: the held-out split every accuracy figure of issue 9 is scored on."""

import subprocess
import sys
from pathlib import Path

import yaml
from ultralytics.data.dataset import YOLODataset

TOOL = Path(__file__).resolve().parents[1] / "tools" / "coco128_split.py"


def test_split_is_disjoint_and_its_label_caches_are_ready_inside_it(coco128, tmp_path):
    out = tmp_path / "split"
    shared_before = sorted(p.name for p in (coco128 / "labels").iterdir())  # before the tool too: it only links
    subprocess.run([sys.executable, str(TOOL), str(out), "--coco128", str(coco128)], check=True, capture_output=True)
    # written by the tool, so runs started together on a fresh split do not race to write them
    assert all((out / "labels" / f"{split}.cache").is_file() for split in ("train", "val"))
    data = yaml.safe_load((out / "coco128-split.yaml").read_text())
    names = {split: [Path(line).name for line in (out / data[split]).read_text().split()] for split in ("train", "val")}
    assert (len(names["train"]), len(names["val"])) == (96, 32)
    assert not set(names["train"]) & set(names["val"])
    assert sorted(names["train"] + names["val"]) == sorted(p.name for p in (coco128 / "images" / "train2017").iterdir())

    for split in ("train", "val"):
        dataset = YOLODataset(img_path=str(out / data[split]), data={"names": data["names"], "channels": 3},
                              imgsz=320, augment=False, prefix=f"{split}: ")  # fmt: skip
        boxes = sum(len(label["cls"]) for label in dataset.labels)
        assert boxes == sum(_box_count(coco128, name) for name in names[split]), "every label reaches Ultralytics"
    assert sorted(p.name for p in (coco128 / "labels").iterdir()) == shared_before, "nothing written into ../shared"


def _box_count(coco128: Path, image_name: str) -> int:
    label = coco128 / "labels" / "train2017" / f"{Path(image_name).stem}.txt"
    return sum(1 for line in label.read_text().splitlines() if line.strip()) if label.exists() else 0
