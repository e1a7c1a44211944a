"""TensorRT engines from our ONNX with the TensorRT Python API (8.5 on JetPack 5, and 10), FP16 or INT8.

The engine file is the plain serialized engine (`trtexec --loadEngine` reads it); what it is lives in the JSON sidecar.
INT8 uses an entropy calibrator fed letterboxed images exactly as inference sees them, with a calibration cache beside
the engine so a rebuild (or `trtexec --int8 --calib=<cache>`) skips calibration.
TensorRT and pycuda are imported only here, and only when an engine is built.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import YoloPruneError
from .onnx import INPUT_NAME

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PAD_VALUE = 114  # Ultralytics' letterbox grey


def import_tensorrt():
    """The `tensorrt` module, or one error saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise YoloPruneError(
            "TensorRT is not installed: building .engine files needs a CUDA machine with TensorRT and pycuda "
            "(pip install 'yolo-prune[tensorrt]'; on a Jetson they come with JetPack). ONNX export works without it."
        ) from None
    return trt


def import_pycuda():
    """pycuda's driver module with a CUDA context made current, or one error."""
    try:
        import pycuda.autoinit  # noqa: F401  (creates and pushes a context on device 0)
        import pycuda.driver as cuda
    except ImportError:
        raise YoloPruneError(
            "pycuda is not installed: INT8 calibration and TensorRT timing need it (pip install pycuda on the CUDA "
            "machine)."
        ) from None
    return cuda


def tensorrt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


# --------------------------------------------------------------------------------------------- calibration data


def calibration_images(data, max_images: int = 512) -> list[Path]:
    """Up to `max_images` image files for INT8 calibration: a folder, or a dataset YAML's train split (default demo)."""
    if data is not None and Path(data).is_dir():
        files = _images_in(Path(data))
    else:
        from ..eval.data import dataset_yaml, load_dataset, ultralytics_yaml

        with ultralytics_yaml(dataset_yaml(data)) as file:
            info = load_dataset(file)
        splits = info["train"] if isinstance(info["train"], list) else [info["train"]]
        files = [f for split in splits for f in _split_images(Path(split))]
    if not files:
        raise YoloPruneError(f"No calibration images found in '{data}'; give a folder of images or a dataset YAML.")
    step = max(1, len(files) // max_images)  # spread the picks over the whole split
    return files[::step][:max_images]


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


def entropy_calibrator(trt, batches: Iterator[np.ndarray], batch: int, cache_file: Path):
    """An IInt8EntropyCalibrator2 feeding `batches` to the GPU and keeping its cache in `cache_file`."""
    cuda = import_pycuda()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.batches, self.device_input = batches, None

        def get_batch_size(self):
            return batch

        def get_batch(self, names):
            data = next(self.batches, None)
            if data is None:
                return None  # calibration done
            data = np.ascontiguousarray(data, dtype=np.float32)
            if self.device_input is None:
                self.device_input = cuda.mem_alloc(data.nbytes)
            cuda.memcpy_htod(self.device_input, data)
            return [int(self.device_input)]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache):
            from .files import write_bytes

            write_bytes(cache_file, bytes(cache))

    return EntropyCalibrator()


# ------------------------------------------------------------------------------------------------------ builder


def build_engine(onnx_file, engine_file, imgsz, batch=1, dynamic=False, half=False, int8=False, calib_images=None,
                 workspace=4.0, dla=None) -> dict:  # fmt: skip
    """Build and write a plain TensorRT engine; return build facts for the sidecar.

    Args:
        onnx_file: ONNX from `export_onnx`.
        engine_file: output path.
        imgsz: (h, w) of the ONNX input.
        batch: the engine's batch (with `dynamic`, the maximum of the optimization profile, whose minimum is 1).
        dynamic: the ONNX has a dynamic batch axis.
        half: allow FP16 kernels.
        int8: INT8 with entropy calibration over `calib_images` (or the cache beside the engine).
        calib_images: image files for INT8 calibration.
        workspace: builder workspace in GiB.
        dla: DLA core to run on (Jetson), with GPU fallback for unsupported layers.
    """
    trt = import_tensorrt()
    major = tensorrt_major(trt)
    if major >= 11 and (half or int8):
        raise YoloPruneError(
            f"TensorRT {trt.__version__} builds strongly typed networks only (no FP16/INT8 builder flags); use "
            "TensorRT 8.5-10 for --half/--int8, or build FP32."
        )
    if dla is not None and not (half or int8):
        raise YoloPruneError("DLA cores run FP16 or INT8 only: add --half or --int8 to --dla.")
    logger = trt.Logger(trt.Logger.INFO)
    builder = trt.Builder(logger)
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # implicit in TRT 10
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise YoloPruneError(f"TensorRT cannot parse '{onnx_file}': {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace * (1 << 30)))
    h, w = imgsz
    profile = None
    if dynamic:
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, (1, 3, h, w), (max(1, batch // 2), 3, h, w), (batch, 3, h, w))
        config.add_optimization_profile(profile)
    if half or int8:
        config.set_flag(trt.BuilderFlag.FP16)  # with INT8 too: layers without INT8 kernels fall back to FP16
    cache_file = calibration_cache_path(engine_file)
    if int8:
        if not calib_images and not cache_file.is_file():
            raise YoloPruneError("INT8 needs calibration images (--data) or an existing calibration cache.")
        batches = calibration_batches(calib_images, imgsz, batch) if calib_images else iter(())
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = entropy_calibrator(trt, batches, batch, cache_file)  # a local keeps it alive through the build
        config.int8_calibrator = calibrator
        if profile is not None and major < 10:  # deprecated in TensorRT 10, which calibrates with profile 0
            config.set_calibration_profile(profile)
    if dla is not None:
        if not 0 <= dla < builder.num_DLA_cores:
            raise YoloPruneError(f"DLA core {dla} does not exist: this device has {builder.num_DLA_cores} DLA cores.")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise YoloPruneError("TensorRT failed to build the engine; its log above says which layer or setting failed.")
    from .files import write_bytes

    write_bytes(engine_file, bytes(serialized))
    return {
        "tensorrt": trt.__version__,
        "fast_fp16": getattr(builder, "platform_has_fast_fp16", None),  # gone from the Builder in TensorRT 10
        "fast_int8": getattr(builder, "platform_has_fast_int8", None),
        "calibration_cache": str(cache_file) if int8 else None,
        "dla_core": dla,
    }


def calibration_cache_path(engine_file) -> Path:
    engine_file = Path(engine_file)
    return engine_file.with_name(engine_file.stem + ".calib.cache")
