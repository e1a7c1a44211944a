"""Shared fixtures: offline Ultralytics, the ../shared/data folder (skipped when absent), small models."""

import os
from pathlib import Path

import pytest

# offline from the environment, before ultralytics is imported anywhere (Ultralytics reads it once, at import);
# the user's Ultralytics settings file is never written (tests/test_ultralytics_native.py)
os.environ.setdefault("YOLO_OFFLINE", "1")

# resolved: Ultralytics and our data code resolve image paths, so a symlinked ../shared must compare equal
SHARED_DATA = (Path(__file__).resolve().parents[1].parent / "shared" / "data").resolve()


def shared(*parts) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the shared data folder must sit beside the repository")
    return path


@pytest.fixture(scope="session")
def coco8() -> Path:
    return shared("coco8")


@pytest.fixture(scope="session")
def coco128() -> Path:
    return shared("coco128")


@pytest.fixture(scope="session")
def coco8_images(coco8) -> list[Path]:
    return sorted((coco8 / "images" / "val").glob("*.jpg"))


@pytest.fixture(scope="session")
def slim_checkpoint(tmp_path_factory) -> Path:
    """yolov7-tiny pruned by 37 % of its FLOPs and physically slimmed (`yolo-prune prune`), as a checkpoint."""
    from yolo_prune.api import prune

    out = tmp_path_factory.mktemp("slim") / "slim.pt"
    prune("yolov7-tiny.yaml", flops=0.37, out=out)
    return out


@pytest.fixture(scope="session")
def slim_v8n(tmp_path_factory) -> Path:
    """yolov8n pruned by 30 % at 64 px (seconds): a small genuine slim checkpoint for loading and bad-input tests."""
    from yolo_prune.api import prune

    out = tmp_path_factory.mktemp("slim_v8n") / "slim.pt"
    prune("yolov8n.yaml", flops=0.3, imgsz=64, out=out)
    return out


@pytest.fixture(scope="session")
def yolov5n_official() -> Path:
    """The shared official YOLOv5n checkpoint (pickles the YOLOv5 repository's classes)."""
    return shared("yolov5n_coco", "yolov5n.pt")


@pytest.fixture(scope="session")
def yolov5n_coco(tmp_path_factory) -> Path:
    """The shared COCO-trained YOLOv5n, imported as an Ultralytics checkpoint: real detections to score."""
    from yolo_prune.api import import_checkpoint

    source = shared("yolov5n_coco", "yolov5n.pt")
    # not named yolov5n.pt: Ultralytics would swap that name for yolov5nu.pt and try to download it
    return Path(import_checkpoint(source, out=tmp_path_factory.mktemp("yolov5n") / "yolov5n_coco.pt"))


@pytest.fixture(scope="session")
def coco8_yaml(tmp_path_factory, coco8) -> Path:
    """coco8 as an Ultralytics dataset YAML with an absolute path and the 80 COCO names (the shared folder has none)."""
    import yaml
    from ultralytics.utils import ROOT

    names = yaml.safe_load((ROOT / "cfg/datasets/coco8.yaml").read_text())["names"]
    folder = tmp_path_factory.mktemp("data")
    link_files(coco8, folder / "coco8", ("images", "labels"))
    path = folder / "coco8.yaml"
    path.write_text(yaml.safe_dump({"path": str(folder / "coco8"), "train": "images/train", "val": "images/val",
                                    "names": names}))  # fmt: skip
    return path


@pytest.fixture(scope="session")
def coco128_layout(tmp_path_factory, coco128):
    """coco128 laid out again from the named folders (and its data.yaml), so a test that hands that data.yaml to
    Ultralytics gets the label cache written there and not into ../shared: `coco128_layout(("images", "labels"))`."""

    def layout(kinds: tuple[str, ...]) -> Path:
        folder = tmp_path_factory.mktemp("coco128") / "coco128"
        link_files(coco128, folder, kinds)
        (folder / "data.yaml").write_text((coco128 / "data.yaml").read_text())  # `path: .`: relative to this file
        return folder

    return layout


@pytest.fixture(scope="session")
def coco128_linked(coco128_layout) -> Path:
    """coco128 laid out again with its official annotations (the evaluator finds them beside the data)."""
    return coco128_layout(("images", "labels", "annotations"))


def link_files(source: Path, target: Path, kinds: tuple[str, ...]) -> None:
    """Link every file under source/<kind> into target/<kind> one by one: Ultralytics resolves a linked folder back
    to ../shared and would write its label caches there, a linked file it does not."""
    for kind in kinds:
        for file in (source / kind).rglob("*"):
            if file.is_file():
                link = target / file.relative_to(source)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(file)
