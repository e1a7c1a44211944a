"""The embedded demo dataset: deterministic, valid YOLO labels, generated once, never half-written."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from yolo_prune import demo_data
from yolo_prune.demo_data import DEMO_NAMES, VERSION, ensure_demo_dataset

SMALL = {"n_train": 12, "n_val": 4}


def files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return ensure_demo_dataset(tmp_path_factory.mktemp("demo") / "set", **SMALL)


def test_yaml_describes_the_set(demo):
    cfg = yaml.safe_load(demo.read_text())
    assert cfg["path"] == str(demo.parent)
    assert cfg["names"] == dict(enumerate(DEMO_NAMES))
    assert len(list((demo.parent / cfg["train"]).glob("*.jpg"))) == SMALL["n_train"]
    assert len(list((demo.parent / cfg["val"]).glob("*.jpg"))) == SMALL["n_val"]
    assert demo.parent.stat().st_mode & 0o777 == 0o755  # built in a private temp dir, published readable


def test_labels_are_valid_and_match_the_pixels(demo):
    root = demo.parent
    images = sorted((root / "images").rglob("*.jpg"))
    counts = []
    for image in images:
        label = root / "labels" / image.parent.name / f"{image.stem}.txt"
        rows = np.loadtxt(label, ndmin=2)
        counts.append(len(rows))
        assert rows.shape[1] == 5
        assert set(rows[:, 0]) <= set(range(len(DEMO_NAMES)))
        xc, yc, w, h = rows[:, 1:].T
        assert ((w > 0) & (w <= 1) & (h > 0) & (h <= 1)).all()
        eps = 1e-6  # labels carry 6 decimals
        assert ((xc - w / 2 >= -eps) & (xc + w / 2 <= 1 + eps) & (yc - h / 2 >= -eps) & (yc + h / 2 <= 1 + eps)).all()
        with Image.open(image) as im:
            assert 160 <= im.width <= 256 and 160 <= im.height <= 256
            pixels = np.asarray(im.convert("HSV")).astype(float)
        # objects are saturated colours on a muted background: outside the boxes is grey, inside mostly colour
        inside = np.zeros(pixels.shape[:2], bool)
        for x, y, bw, bh in zip(xc * im.width, yc * im.height, w * im.width, h * im.height):
            inside[int(y - bh / 2) : int(y + bh / 2), int(x - bw / 2) : int(x + bw / 2)] = True
        assert (pixels[..., 1][~inside] > 120).mean() < 0.02
        assert (pixels[..., 1][inside] > 120).mean() > 0.4
    assert min(counts) >= 1 and max(counts) <= 6


def test_generation_is_deterministic(demo, tmp_path):
    other = ensure_demo_dataset(tmp_path / "again", **SMALL)
    assert files(demo.parent) == files(other.parent)
    for rel in files(demo.parent):
        if rel.name != "data.yaml":  # holds its own absolute path
            assert (demo.parent / rel).read_bytes() == (other.parent / rel).read_bytes(), rel
    assert yaml.safe_load(demo.read_text())["names"] == yaml.safe_load(other.read_text())["names"]


def test_reuse_when_complete_rebuild_when_different(tmp_path, monkeypatch):
    root = tmp_path / "set"
    yaml_path = ensure_demo_dataset(root, **SMALL)
    stamp = (root / "images" / "train" / "train_0000.jpg").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("a complete dataset must be reused, not regenerated")

    with monkeypatch.context() as m:
        m.setattr(demo_data, "_write_dataset", fail)
        assert ensure_demo_dataset(root, **SMALL) == yaml_path
    assert (root / "images" / "train" / "train_0000.jpg").stat().st_mtime_ns == stamp

    ensure_demo_dataset(root, n_train=5, n_val=2)  # another build at the same place replaces the old one whole
    assert len(list((root / "images" / "train").iterdir())) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    import cv2

    written = []
    real = cv2.imencode

    def flaky(*args, **kwargs):
        if len(written) == 7:
            raise OSError("disk full")
        written.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cv2, "imencode", flaky)
    with pytest.raises(OSError, match="disk full"):
        ensure_demo_dataset(tmp_path / "set", **SMALL)
    assert list(tmp_path.iterdir()) == []  # no dataset folder, no half-built temp folder


def test_leftover_of_a_killed_build_is_ignored_and_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now belongs to no process: the build folder it "left" is stale
    stale = tmp_path / f".set.tmp-{dead.pid}-abc"
    (stale / "images" / "train").mkdir(parents=True)
    (stale / "manifest.json").write_text("{}")
    live = tmp_path / f".set.tmp-{os.getpid()}-xyz"  # a build in progress in a live process stays
    live.mkdir()
    ensure_demo_dataset(tmp_path / "set", **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "set"]


def test_default_root_is_under_ultralytics_datasets_dir():
    from ultralytics.utils import SETTINGS

    root = demo_data.default_root()
    assert root.parent == Path(SETTINGS["datasets_dir"]) and root.name.endswith(f"_v{VERSION}")


def test_yaml_path_survives_odd_folder_names(tmp_path):
    root = tmp_path / "my data #1: 'x'"
    cfg = yaml.safe_load(ensure_demo_dataset(root, n_train=2, n_val=1).read_text())
    assert cfg["path"] == str(root) and cfg["train"] == "images/train"
