"""INT8 calibration: the images, their batches (pre-processed exactly as at inference), the entropy calibrator, and
the calibration cache with the key that says what it was calibrated on.

A cache is only valid for the network and the images it was made from: re-pruning under the same name or new
`--data` must recalibrate. So `<engine stem>.calib.cache` gets a key file `<engine stem>.calib.cache.json` with the
SHA-256 of the ONNX file and of the calibration images, and is reused only when both match. The Jetson kit computes
the same key, so a cache moves between the host and the device with its ONNX.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import YoloPruneError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PAD_VALUE = 114  # Ultralytics' letterbox grey
CALIBRATOR = "EntropyCalibration2"


# ------------------------------------------------------------------------------------------------------ images


def calibration_images(data, max_images: int = 512) -> list[Path]:
    """Up to `max_images` image files for INT8 calibration: a folder, or a dataset YAML's train split (default demo)."""
    if data is not None and Path(data).is_dir():
        files = _images_in(Path(data))
    else:
        from ..data import dataset_yaml, load_dataset, ultralytics_yaml

        with ultralytics_yaml(dataset_yaml(data)) as file:
            info = load_dataset(file)
        splits = info["train"] if isinstance(info["train"], list) else [info["train"]]
        files = [f for split in splits for f in _split_images(Path(split))]
    if not files:
        raise YoloPruneError(f"No calibration images found in '{data}'; give a folder of images or a dataset YAML.")
    step = max(1, len(files) // max_images)  # spread the picks over the whole split
    return files[::step][:max_images]


def calibration_array(data, count: int, imgsz: int) -> np.ndarray:
    """Up to `count` images of `data` (as `calibration_images`), letterboxed to `imgsz`: (n, 3, imgsz, imgsz)."""
    import cv2

    arrays = [preprocess(image, (imgsz, imgsz)) for image in map(cv2.imread, map(str, calibration_images(data, count)))
              if image is not None]  # fmt: skip
    if not arrays:
        raise YoloPruneError(f"None of the images of '{data}' could be read.")
    return np.stack(arrays)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _split_images(split: Path) -> list[Path]:
    if split.is_dir():
        return _images_in(split)
    if split.suffix == ".txt" and split.is_file():  # Ultralytics list file: one image path a line, relative to it
        lines = [line.strip() for line in split.read_text().splitlines() if line.strip()]
        return [p if p.is_absolute() else (split.parent / p).resolve() for p in map(Path, lines)]
    return []


def letterbox(image: np.ndarray, imgsz: tuple[int, int]) -> np.ndarray:
    """Resize keeping the aspect ratio and pad to `imgsz` (h, w) with grey, centred: Ultralytics' predict geometry."""
    import cv2

    h0, w0 = image.shape[:2]
    r = min(imgsz[0] / h0, imgsz[1] / w0)
    new_w, new_h = max(round(w0 * r), 1), max(round(h0 * r), 1)
    if (new_w, new_h) != (w0, h0):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (imgsz[1] - new_w) / 2, (imgsz[0] - new_h) / 2
    top, left = round(dh - 0.1), round(dw - 0.1)
    bottom, right = imgsz[0] - new_h - top, imgsz[1] - new_w - left
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)


def preprocess(image_bgr: np.ndarray, imgsz: tuple[int, int]) -> np.ndarray:
    """One BGR uint8 image -> (3, h, w) float32 RGB in [0, 1], letterboxed: the engine's input."""
    rgb = letterbox(image_bgr, imgsz)[..., ::-1]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0


def calibration_batches(images: list[Path], imgsz, batch: int) -> Iterator[np.ndarray]:
    """Full (batch, 3, h, w) float32 batches of preprocessed images; a last partial batch is dropped.

    Checked here, before TensorRT pulls the batches from inside its builder (where an error would be lost).
    """
    from .onnx import imgsz_pair

    if len(images) < batch:
        raise YoloPruneError(f"INT8 calibration needs at least one full batch: {len(images)} images for batch {batch}.")
    return _batches(list(images), imgsz_pair(imgsz), batch)


def _batches(images: list[Path], imgsz: tuple[int, int], batch: int) -> Iterator[np.ndarray]:
    import cv2

    for start in range(0, len(images) - batch + 1, batch):
        arrays = []
        for file in images[start : start + batch]:
            image = cv2.imread(str(file))
            if image is None:  # unreadable file: skip it rather than abort a long calibration
                continue
            arrays.append(preprocess(image, imgsz))
        if len(arrays) == batch:
            yield np.stack(arrays)


# ------------------------------------------------------------------------------------------------ cache and key


def cache_path(engine_file) -> Path:
    engine_file = Path(engine_file)
    return engine_file.with_name(engine_file.stem + ".calib.cache")


def key_path(cache_file) -> Path:
    return Path(str(cache_file) + ".json")


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def images_sha256(files) -> str:
    """One digest of the calibration images' contents, in the order they are fed."""
    h = hashlib.sha256()
    for file in files:
        h.update(file_sha256(file).encode())
    return h.hexdigest()


def calibration_key(onnx_file, images) -> dict:
    """What a calibration cache depends on: the network (ONNX bytes), the images (None: not given), the algorithm."""
    return {
        "onnx_sha256": file_sha256(onnx_file),
        "images_sha256": images_sha256(images) if images else None,
        "calibrator": CALIBRATOR,
    }


def read_key(cache_file) -> dict | None:
    path = key_path(cache_file)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:  # a damaged key file proves nothing: treat the cache as of unknown origin
        return None


def reuse_cache(key: dict, stored: dict | None, cache_exists: bool) -> bool:
    """Whether the existing cache may stand in for calibration; one error when it cannot and no images are given.

    With images, the cache is reused only when it was made from this ONNX and these images, else recalibrated.
    Without images it is the only source of scales: it must exist and belong to this ONNX.
    """
    if key["images_sha256"] is not None:
        return cache_exists and stored == key
    if not cache_exists:
        raise YoloPruneError("INT8 needs calibration images (--data) or a calibration cache made for this ONNX.")
    if stored is None or stored.get("calibrator") != key["calibrator"]:
        raise YoloPruneError("The calibration cache has no key saying what it was made from; give --data to "
                             "recalibrate")
    if stored.get("onnx_sha256") != key["onnx_sha256"]:
        raise YoloPruneError(
            "The calibration cache was made for another ONNX (re-pruned or re-exported?); give --data to recalibrate."
        )
    return True


# ------------------------------------------------------------------------------------------------- calibrator


def entropy_calibrator(trt, cuda, batches: Iterator[np.ndarray], batch: int, cache_file: Path, key: dict, reuse: bool):
    """An IInt8EntropyCalibrator2 feeding `batches` to the GPU; it hands TensorRT the cache only when `reuse`.

    `cuda` is pycuda.driver with the primary context current (see `cuda.cuda_scope`). An error while reading a batch
    is kept in `.error` (TensorRT calls `get_batch` from inside the build and would swallow it).
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.device_input, self.error = None, None

        def get_batch_size(self):
            return batch

        def get_batch(self, names):
            try:
                data = next(batches, None)
            except Exception as e:  # noqa: BLE001  (reported after the build)
                self.error = e
                return None
            if data is None:
                return None  # calibration done
            data = np.ascontiguousarray(data, dtype=np.float32)
            if self.device_input is None:
                self.device_input = cuda.mem_alloc(data.nbytes)
            cuda.memcpy_htod(self.device_input, data)
            return [int(self.device_input)]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if reuse and cache_file.is_file() else None

        def write_calibration_cache(self, cache):
            from .files import write_bytes, write_json

            write_bytes(cache_file, bytes(cache))
            write_json(key_path(cache_file), key)

    return EntropyCalibrator()
