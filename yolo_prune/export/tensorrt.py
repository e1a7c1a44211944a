"""TensorRT engines from our ONNX with the TensorRT Python API (8.5 on JetPack 5, 10, and 11 for FP32), FP16 or INT8.

The engine file is the plain serialized engine (`trtexec --loadEngine` reads it); what it is lives in the JSON sidecar.
INT8 uses an entropy calibrator fed letterboxed images exactly as inference sees them, with a calibration profile of
the calibration batch, the decode tail kept in FP32, and a calibration cache beside the engine that is reused only
for the same ONNX and images (`calibration.py`). Everything TensorRT is built inside `cuda_scope`, in the device's
primary context, and released before it is popped (`cuda.py`). TensorRT and pycuda are imported only when an
engine is built.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import YoloPruneError
from . import calibration, trt_plan
from .cuda import cuda_scope, import_tensorrt, tensorrt_major
from .onnx import INPUT_NAME


def build_engine(onnx_file, engine_file, imgsz, batch=1, dynamic=False, half=False, int8=False, calib_images=None,
                 workspace=4.0, dla=None) -> dict:  # fmt: skip
    """Build and write a plain TensorRT engine; return build facts for the sidecar.

    Args:
        onnx_file: ONNX from `export_onnx`.
        engine_file: output path.
        imgsz: (h, w) of the ONNX input.
        batch: the engine's batch (with `dynamic`, the largest; the profile runs from 1 and is tuned at it).
        dynamic: the ONNX has a dynamic batch axis.
        half: allow FP16 kernels.
        int8: INT8 with entropy calibration over `calib_images` at `batch` (or a cache made for this ONNX).
        calib_images: image files for INT8 calibration.
        workspace: builder workspace in GiB.
        dla: DLA core to run on (Jetson), with GPU fallback for unsupported layers.
    """
    trt = import_tensorrt()
    _check_request(trt, half, int8, dla)
    job = {"onnx": Path(onnx_file), "engine": Path(engine_file), "imgsz": tuple(imgsz), "batch": batch,
           "dynamic": dynamic, "half": half, "int8": int8, "workspace": workspace, "dla": dla}  # fmt: skip
    if int8:
        job.update(_int8_job(job, calib_images))
    with cuda_scope() as (cuda, scope):
        facts = _build(trt, cuda, scope, job)
    return {"tensorrt": trt.__version__, **facts}


def _check_request(trt, half, int8, dla):
    if tensorrt_major(trt) >= 11 and (half or int8):
        raise YoloPruneError(
            f"TensorRT {trt.__version__} builds strongly typed networks only (no FP16/INT8 builder flags); use "
            "TensorRT 8.5-10 for --half/--int8, or build FP32."
        )
    if dla is not None and not (half or int8):
        raise YoloPruneError("DLA cores run FP16 or INT8 only: add --half or --int8 to --dla.")


def _int8_job(job: dict, calib_images) -> dict:
    """Calibration inputs, checked before any TensorRT object exists: cache decision, batches, FP32 tail."""
    cache = calibration.cache_path(job["engine"])
    key = calibration.calibration_key(job["onnx"], calib_images)
    stored = calibration.read_key(cache)
    reuse = calibration.reuse_cache(key, stored, cache.is_file())
    batches = iter(()) if reuse else calibration.calibration_batches(calib_images, job["imgsz"], job["batch"])
    return {"cache": cache, "key": stored if reuse else key, "reuse": reuse, "batches": batches,
            "tail": trt_plan.fp32_tail(job["onnx"])}  # fmt: skip


def _build(trt, cuda, scope, job: dict) -> dict:
    """Parse, configure and build inside the CUDA scope; every TensorRT object lives on `scope`."""
    scope.logger = trt.Logger(trt.Logger.INFO)
    scope.builder = trt.Builder(scope.logger)
    major = tensorrt_major(trt)
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # implicit from 10
    scope.network = scope.builder.create_network(flags)
    scope.parser = trt.OnnxParser(scope.network, scope.logger)
    if not scope.parser.parse_from_file(str(job["onnx"])):
        errors = "; ".join(str(scope.parser.get_error(i)) for i in range(scope.parser.num_errors))
        raise YoloPruneError(f"TensorRT cannot parse '{job['onnx']}': {errors}")
    scope.config = scope.builder.create_builder_config()
    scope.config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(job["workspace"] * (1 << 30)))
    facts = _set_profile(trt, scope, job)
    if job["half"] or job["int8"]:
        scope.config.set_flag(trt.BuilderFlag.FP16)  # with INT8 too: layers without INT8 kernels fall back to FP16
    if job["int8"]:
        facts.update(_set_int8(trt, cuda, scope, job))
    if job["dla"] is not None:
        _set_dla(trt, scope, job["dla"])
    serialized = scope.builder.build_serialized_network(scope.network, scope.config)
    if job["int8"] and scope.calibrator.error is not None:
        raise YoloPruneError(f"INT8 calibration failed while reading images: {scope.calibrator.error}")
    if serialized is None:
        raise YoloPruneError("TensorRT failed to build the engine; its log above says which layer or setting failed.")
    from .files import write_bytes

    write_bytes(job["engine"], bytes(serialized))
    return {**facts, "fast_fp16": getattr(scope.builder, "platform_has_fast_fp16", None),  # gone in TensorRT 11
            "fast_int8": getattr(scope.builder, "platform_has_fast_int8", None), "dla_core": job["dla"]}  # fmt: skip


def _set_profile(trt, scope, job: dict) -> dict:
    if not job["dynamic"]:
        return {"profile": None}
    shapes = trt_plan.optimization_profile(job["batch"], job["imgsz"])
    scope.profile = scope.builder.create_optimization_profile()
    scope.profile.set_shape(INPUT_NAME, *shapes)
    if scope.config.add_optimization_profile(scope.profile) < 0:
        raise YoloPruneError(f"TensorRT rejected the optimization profile {shapes}.")
    return {"profile": {"min": shapes[0], "opt": shapes[1], "max": shapes[2]}}


def _set_int8(trt, cuda, scope, job: dict) -> dict:
    """INT8 flag, calibrator, calibration profile (dynamic batch) and the FP32 decode tail."""
    scope.config.set_flag(trt.BuilderFlag.INT8)
    scope.calibrator = calibration.entropy_calibrator(trt, cuda, job["batches"], job["batch"], job["cache"],
                                                      job["key"], job["reuse"])  # fmt: skip
    scope.config.int8_calibrator = scope.calibrator
    if job["dynamic"]:
        scope.calibration_profile = scope.builder.create_optimization_profile()
        scope.calibration_profile.set_shape(INPUT_NAME, *trt_plan.calibration_profile(job["batch"], job["imgsz"]))
        if not scope.config.set_calibration_profile(scope.calibration_profile):
            raise YoloPruneError("TensorRT rejected the INT8 calibration profile.")
    kept = _pin_fp32(trt, scope.network, job["tail"])
    if not kept:
        raise YoloPruneError("No decode layer was found in the TensorRT network; cannot keep the decode in FP32.")
    scope.config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return {"calibration_cache": str(job["cache"]), "calibration_reused": job["reuse"],
            "calibration_batch": job["batch"], "calibration_key": job["key"], "fp32_layers": kept}


def _pin_fp32(trt, network, tail: dict) -> list[str]:
    """Set the decode tail's layers to FP32 (compute precision and output types); return their names."""
    floats = (trt.float32, trt.float16)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    outputs = [[layer.get_output(j) for j in range(layer.num_outputs)] for layer in layers]
    described = [(layer.name, [t.name for t in out], all(t.dtype in floats for t in out))
                 for layer, out in zip(layers, outputs)]  # fmt: skip
    picked = [layers[i] for i in trt_plan.match_layers(described, tail)]
    for layer in picked:
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
    return [layer.name for layer in picked]


def _set_dla(trt, scope, dla: int):
    if not 0 <= dla < scope.builder.num_DLA_cores:
        raise YoloPruneError(f"DLA core {dla} does not exist: this device has {scope.builder.num_DLA_cores} DLA cores.")
    scope.config.default_device_type = trt.DeviceType.DLA
    scope.config.DLA_core = int(dla)
    scope.config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
