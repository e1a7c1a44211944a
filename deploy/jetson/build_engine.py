#!/usr/bin/env python3
"""Build a TensorRT engine from a yolo-prune ONNX on the device (TensorRT 8.5 on JetPack 5, 10, or 11 for FP32).

    python3 build_engine.py --onnx slim.onnx --engine slim_fp16.engine --fp16
    python3 build_engine.py --onnx slim.onnx --engine slim_int8.engine --int8 --calib-images train_images/

INT8 uses entropy calibration on letterboxed images (the same pre-processing as inference) at the engine's batch
(a dynamic batch gets a calibration profile of exactly that batch), keeps the decode after the head's last
convolutions in FP32, and keeps the calibration cache beside the engine (`<engine stem>.calib.cache`, with a key file
`.calib.cache.json`): a rebuild reuses it only for the same ONNX and the same images. A dynamic batch is tuned at its
largest batch (`--batch`). The engine is a plain serialized engine (trtexec --loadEngine reads it); the ONNX sidecar
is copied beside it with the precision updated, so detect.py and benchmark.py know the class names and FLOPs.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import trtkit  # noqa: E402
import yolokit  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True)
    p.add_argument("--engine", required=True)
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--int8", action="store_true")
    p.add_argument("--calib-images", default=None, help="folder of calibration images for --int8")
    p.add_argument("--calib-max", type=int, default=512, help="use at most this many calibration images")
    p.add_argument("--batch", type=int, default=None, help="largest batch of a dynamic-batch ONNX (default 1)")
    p.add_argument("--workspace", type=float, default=2.0, help="builder workspace in GiB")
    p.add_argument("--dla", type=int, default=None, help="DLA core (needs --fp16 or --int8)")
    return p.parse_args(argv)


def calibration_batches(files, imgsz, batch):
    """Full float32 (batch, 3, h, w) batches of letterboxed images; a last partial batch is dropped."""
    import cv2

    for start in range(0, len(files) - batch + 1, batch):
        images = [cv2.imread(f) for f in files[start : start + batch]]
        if all(image is not None for image in images):  # skip a batch with an unreadable file
            yield np.stack([yolokit.preprocess(image, imgsz) for image in images])


def make_calibrator(trt, cuda, batches, batch, cache_file, key, reuse):
    """An entropy calibrator; it hands TensorRT the cache only when `reuse`, and writes the key beside a new one."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.device_input = None

        def get_batch_size(self):
            return batch

        def get_batch(self, names):
            data = next(batches, None)
            if data is None:
                return None
            data = np.ascontiguousarray(data, dtype=np.float32)
            if self.device_input is None:
                self.device_input = cuda.mem_alloc(data.nbytes)
            cuda.memcpy_htod(self.device_input, data)
            return [int(self.device_input)]

        def read_calibration_cache(self):
            if reuse and os.path.isfile(cache_file):
                with open(cache_file, "rb") as f:
                    return f.read()
            return None

        def write_calibration_cache(self, cache):
            with open(cache_file, "wb") as f:
                f.write(bytes(cache))
            yolokit.write_json(cache_file + ".json", key)

    return EntropyCalibrator()


def check_request(args, major: int):
    if major >= 11 and (args.fp16 or args.int8):
        raise SystemExit("TensorRT 11 builds strongly typed networks only (no FP16/INT8 builder flags): use "
                         "TensorRT 8.5-10 for --fp16/--int8, or build FP32")  # fmt: skip
    if args.dla is not None and not (args.fp16 or args.int8):
        raise SystemExit("DLA runs FP16 or INT8 only: add --fp16 or --int8")


def int8_plan(args, batch: int) -> dict:
    """Calibration files, cache, key and the reuse decision, settled before the build starts."""
    files = yolokit.list_images(args.calib_images) if args.calib_images else []
    files = files[:: max(1, len(files) // args.calib_max)][: args.calib_max]
    if args.calib_images and len(files) < batch:
        raise SystemExit("need at least %d calibration images in %s" % (batch, args.calib_images))
    cache = os.path.splitext(args.engine)[0] + ".calib.cache"
    key = trtkit.calibration_key(args.onnx, files)
    stored = trtkit.read_key(cache)
    reuse = trtkit.reuse_cache(key, stored, cache)
    return {"files": files, "cache": cache, "key": stored if reuse else key, "reuse": reuse}


def build(args) -> str:
    trt, cuda = trtkit.import_tensorrt_and_pycuda()
    check_request(args, trtkit.version_tuple(trt.__version__)[0])
    with trtkit.cuda_scope(cuda) as scope:
        batch, precision, kept = _build(trt, cuda, scope, args)
    sidecar = yolokit.read_sidecar(args.onnx)
    if sidecar is not None:
        sidecar.update(format="engine", precision=precision, onnx=os.path.basename(args.onnx), batch=batch,
                       tensorrt=trt.__version__, dla_core=args.dla, fp32_layers=kept)  # fmt: skip
        yolokit.write_json(args.engine + ".json", sidecar)
    return args.engine


def _build(trt, cuda, scope, args):
    """Everything TensorRT lives on `scope`, released before the CUDA context is popped."""
    scope.logger = trt.Logger(trt.Logger.INFO)
    scope.builder = trt.Builder(scope.logger)
    major = trtkit.version_tuple(trt.__version__)[0]
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # implicit from 10
    scope.network = scope.builder.create_network(flags)
    scope.parser = trt.OnnxParser(scope.network, scope.logger)
    if not scope.parser.parse_from_file(args.onnx):
        errors = [str(scope.parser.get_error(i)) for i in range(scope.parser.num_errors)]
        raise SystemExit("cannot parse %s: %s" % (args.onnx, "; ".join(errors)))
    shape = tuple(scope.network.get_input(0).shape)
    batch, imgsz = (shape[0] if shape[0] > 0 else (args.batch or 1)), (int(shape[2]), int(shape[3]))
    scope.config = scope.builder.create_builder_config()
    scope.config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(args.workspace * (1 << 30)))
    if shape[0] == -1:
        shapes = trtkit.optimization_profile(batch, imgsz)
        if scope.config.add_optimization_profile(_profile(scope, "profile", shapes)) < 0:
            raise SystemExit("TensorRT rejected the optimization profile %s" % (shapes,))
    if args.fp16 or args.int8:
        scope.config.set_flag(trt.BuilderFlag.FP16)
    if getattr(args, "timing_cache", None):
        _use_timing_cache(scope, args.timing_cache)
    kept = _set_int8(trt, cuda, scope, args, batch, imgsz, shape[0] == -1) if args.int8 else []
    if args.dla is not None:
        scope.config.default_device_type = trt.DeviceType.DLA
        scope.config.DLA_core = args.dla
        scope.config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    serialized = scope.builder.build_serialized_network(scope.network, scope.config)
    if serialized is None:
        raise SystemExit("TensorRT failed to build the engine (see the log above)")
    _write(args.engine, bytes(serialized))
    if getattr(args, "timing_cache", None):
        _write(args.timing_cache, bytes(scope.config.get_timing_cache().serialize()))
    return batch, "int8" if args.int8 else "fp16" if args.fp16 else "fp32", kept


def _profile(scope, name, shapes):
    """An optimization profile of the input with (min, opt, max) `shapes`, kept on `scope` as `name`."""
    setattr(scope, name, scope.builder.create_optimization_profile())
    getattr(scope, name).set_shape(scope.network.get_input(0).name, *shapes)
    return getattr(scope, name)


def _use_timing_cache(scope, path: str):
    """Reuse kernel timings across builds (profile_latency.py builds thousands of small engines)."""
    data = b""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
    scope.timing_cache = scope.config.create_timing_cache(data)
    scope.config.set_timing_cache(scope.timing_cache, False)


def _set_int8(trt, cuda, scope, args, batch, imgsz, dynamic):
    if getattr(args, "timing_ranges", False):  # latency only (profile_latency.py): no calibration, fixed ranges
        scope.config.set_flag(trt.BuilderFlag.INT8)
        trtkit.set_timing_ranges(trt, scope.network)
        return []
    plan = int8_plan(args, batch)
    scope.config.set_flag(trt.BuilderFlag.INT8)
    batches = calibration_batches(plan["files"], imgsz, batch)
    scope.calibrator = make_calibrator(trt, cuda, batches, batch, plan["cache"], plan["key"], plan["reuse"])
    scope.config.int8_calibrator = scope.calibrator
    if dynamic:  # TensorRT calibrates at the profile's opt shape: make it the batch the calibrator feeds
        shapes = trtkit.calibration_profile(batch, imgsz)
        if not scope.config.set_calibration_profile(_profile(scope, "calibration_profile", shapes)):
            raise SystemExit("TensorRT rejected the calibration profile %s" % (shapes,))
    kept = trtkit.pin_tail_fp32(trt, scope.network)
    if not kept:
        raise SystemExit("found no decode layers after the last convolution: is this a yolo-prune ONNX?")
    scope.config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return kept


def _write(path: str, data: bytes):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv=None):
    print("wrote", build(parse_args(argv)))


if __name__ == "__main__":
    main()
