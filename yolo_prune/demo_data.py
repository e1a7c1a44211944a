"""The embedded demo dataset: a small synthetic detection set generated on first use, no download.

Four clearly distinct shapes (circle, square, triangle, cross) in random sizes, colours and positions on noisy,
textured backgrounds; 1-6 objects an image, some overlap. Every image is drawn from its own seed, so the set is
identical on every machine. It lives under Ultralytics' datasets folder (not a temp dir) because checkpoints keep the
data YAML path in their train args, and `yolo val model=best.pt` must still find it later.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import YoloPruneError

VERSION = 1  # bump whenever the generated content changes: it names the folder, so old checkpoints keep theirs
DEMO_NAMES = ["circle", "square", "triangle", "cross"]
N_TRAIN, N_VAL = 1024, 64  # 3 epochs of yolov7-tiny at imgsz 160 reach mAP50-95 0.34 (768 images: 0.20)
SEED = 20261122
_SPLITS = {"train": 0, "val": 1}


def default_root() -> Path:
    from ultralytics.utils import SETTINGS

    return Path(SETTINGS["datasets_dir"]) / f"yolo_prune_demo_v{VERSION}"


def ensure_demo_dataset(root: Path | None = None, n_train: int = N_TRAIN, n_val: int = N_VAL) -> Path:
    """Generate the demo dataset once (reused when complete and of this version) and return its data YAML path.

    Args:
        root: the dataset folder; default `<Ultralytics datasets_dir>/yolo_prune_demo_v<VERSION>`.
        n_train: number of training images.
        n_val: number of validation images.
    """
    root = Path(root).resolve() if root else default_root()
    manifest = {"version": VERSION, "seed": SEED, "n_train": n_train, "n_val": n_val}
    if _is_complete(root, manifest):
        return root / "data.yaml"
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(root)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(root), dir=root.parent))
    except OSError as e:
        raise YoloPruneError(
            f"Cannot create the demo dataset in {root.parent} ({e.strerror}); pass --data with your own dataset YAML "
            "or make that folder writable (`yolo settings datasets_dir=...`)."
        ) from None
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the published dataset is an ordinary readable folder
        _write_dataset(tmp, root, manifest)
        _publish(tmp, root, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful publish
    return root / "data.yaml"


def _is_complete(root: Path, manifest: dict) -> bool:
    """The folder only ever appears by a rename of a finished build; the manifest says which build it is."""
    try:
        found = json.loads((root / "manifest.json").read_text())
        path_line = f"path: {json.dumps(str(root))}\n"
        return found == manifest and path_line in (root / "data.yaml").read_text()
    except (OSError, ValueError):
        return False


def _publish(tmp: Path, root: Path, manifest: dict):
    """Move the finished build into place in one rename; a different old build is moved aside first."""
    if root.exists():
        if _is_complete(root, manifest):  # another process finished first
            return
        trash = Path(tempfile.mkdtemp(prefix=_temp_prefix(root), dir=root.parent))
        os.replace(root, trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(tmp, root)
    except OSError:
        if not _is_complete(root, manifest):  # lost a race to a build that is not ours: say so
            raise


def _temp_prefix(root: Path) -> str:
    return f".{root.name}.tmp-{os.getpid()}-"


def _remove_stale_temps(root: Path):
    """Delete half-built folders left by killed runs (their process is gone)."""
    if os.name != "posix":  # os.kill(pid, 0) only probes on POSIX
        return
    for path in root.parent.glob(f".{root.name}.tmp-*"):
        try:
            pid = int(path.name.split(".tmp-")[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            pass  # not ours, or a live process of another user


def _write_dataset(folder: Path, final_root: Path, manifest: dict):
    import cv2

    for split, count in (("train", manifest["n_train"]), ("val", manifest["n_val"])):
        (folder / "images" / split).mkdir(parents=True)
        (folder / "labels" / split).mkdir(parents=True)
        for i in range(count):
            image, labels = draw_image(np.random.default_rng([SEED, _SPLITS[split], i]))
            ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            if not ok:
                raise RuntimeError(f"OpenCV could not encode demo image {split}_{i:04d}.jpg")
            (folder / "images" / split / f"{split}_{i:04d}.jpg").write_bytes(jpg.tobytes())
            lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels]
            (folder / "labels" / split / f"{split}_{i:04d}.txt").write_text("".join(lines))
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(DEMO_NAMES))
    (folder / "data.yaml").write_text(
        f"# yolo-prune demo dataset v{VERSION}: synthetic shapes, generated by yolo_prune.demo_data\n"
        f"path: {json.dumps(str(final_root))}\ntrain: images/train\nval: images/val\nnames:\n{names}"
    )
    (folder / "manifest.json").write_text(json.dumps(manifest))  # last: marks the build finished


# ------------------------------------------------------------------------------------------------------- drawing


def draw_image(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple]]:
    """One BGR image and its YOLO labels `(class, x_center, y_center, width, height)`, normalised."""
    h, w = (int(v) for v in rng.integers(160, 257, size=2))
    image = _background(rng, h, w)
    masks: list[np.ndarray] = []
    labels = []
    for _ in range(int(rng.integers(1, 7))):
        placed = _place_shape(rng, h, w, masks)
        if placed is None:
            continue
        cls, mask = placed
        image[mask] = _object_colour(rng)
        masks.append(mask)
        ys, xs = np.nonzero(mask)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        labels.append((cls, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h))
    noisy = image.astype(np.float32) + rng.normal(0, 6, image.shape)  # sensor noise over objects and background
    return np.clip(noisy, 0, 255).astype(np.uint8), labels


def _background(rng, h, w) -> np.ndarray:
    """Muted, low-saturation texture: a smooth colour field plus blotches, so objects stand out by colour and shape."""
    import cv2

    coarse = rng.uniform(40, 150, size=(int(rng.integers(3, 7)), int(rng.integers(3, 7)), 1))
    tint = rng.uniform(0.8, 1.2, size=(1, 1, 3))
    field = cv2.resize((coarse * tint).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    blotches = cv2.GaussianBlur(rng.normal(0, 25, size=(h, w)).astype(np.float32), (0, 0), 3)
    return np.clip(field + blotches[..., None], 0, 255).astype(np.uint8)


def _object_colour(rng) -> np.ndarray:
    """A saturated, bright colour (BGR) of random hue."""
    import cv2

    hsv = np.array([[[rng.integers(0, 180), rng.integers(170, 256), rng.integers(190, 256)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]


def _place_shape(rng, h, w, masks, tries: int = 20):
    """A random shape's mask that lies inside the image and hides at most a third of any earlier object."""
    for _ in range(tries):
        cls = int(rng.integers(len(DEMO_NAMES)))
        size = rng.uniform(0.16, 0.42) * min(h, w)
        cx, cy = rng.uniform(size / 2 + 1, w - size / 2 - 1), rng.uniform(size / 2 + 1, h - size / 2 - 1)
        mask = _shape_mask(cls, h, w, cx, cy, size, angle=rng.uniform(-25, 25))
        if all((mask & m).sum() <= m.sum() / 3 for m in masks):
            return cls, mask
    return None


def _shape_mask(cls: int, h: int, w: int, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    """Boolean mask of shape `cls` with outer size `size` px centred at (cx, cy), rotated by `angle` degrees."""
    import cv2

    canvas = np.zeros((h, w), np.uint8)
    r = size / 2
    if DEMO_NAMES[cls] == "circle":
        cv2.circle(canvas, (round(cx), round(cy)), round(r), 255, -1)
        return canvas > 0
    if DEMO_NAMES[cls] == "square":
        polys = [[(-r, -r), (r, -r), (r, r), (-r, r)]]
    elif DEMO_NAMES[cls] == "triangle":
        polys = [[(0, -r), (r * 0.95, r * 0.7), (-r * 0.95, r * 0.7)]]
    else:  # cross: two bars a third of the size thick
        t = r / 3
        polys = [[(-r, -t), (r, -t), (r, t), (-r, t)], [(-t, -r), (t, -r), (t, r), (-t, r)]]
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    for poly in polys:
        pts = np.asarray(poly) @ rot.T + (cx, cy)
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 255)
    return canvas > 0
