#!/usr/bin/env python3
"""Build a TensorRT engine from a yolo-prune ONNX on the device (TensorRT 8.5 on JetPack 5, or TensorRT 10).

    python3 build_engine.py --onnx slim.onnx --engine slim_fp16.engine --fp16
    python3 build_engine.py --onnx slim.onnx --engine slim_int8.engine --int8 --calib-images train_images/

INT8 uses entropy calibration on letterboxed images (the same pre-processing as inference) and keeps the calibration
cache beside the engine (`<engine stem>.calib.cache`), which a rebuild or `trtexec --int8 --calib=<cache>` reuses.
The engine is a plain serialized engine (trtexec --loadEngine reads it); the ONNX sidecar is copied beside it with
the precision updated, so detect.py and benchmark.py know the class names and FLOPs.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import yolokit  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True)
    p.add_argument("--engine", required=True)
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--int8", action="store_true")
    p.add_argument("--calib-images", default=None, help="folder of calibration images for --int8")
    p.add_argument("--calib-max", type=int, default=512, help="use at most this many calibration images")
    p.add_argument("--batch", type=int, default=None, help="max batch for a dynamic-batch ONNX (default 1)")
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


def make_calibrator(trt, batches, batch, cache_file):
    _, cuda = yolokit.import_tensorrt_and_pycuda()

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
            if os.path.isfile(cache_file):
                with open(cache_file, "rb") as f:
                    return f.read()
            return None

        def write_calibration_cache(self, cache):
            with open(cache_file, "wb") as f:
                f.write(bytes(cache))

    return EntropyCalibrator()


def build(args) -> str:
    trt, _ = yolokit.import_tensorrt_and_pycuda()

    major = int(trt.__version__.split(".")[0])
    if args.dla is not None and not (args.fp16 or args.int8):
        raise SystemExit("DLA runs FP16 or INT8 only: add --fp16 or --int8")
    logger = trt.Logger(trt.Logger.INFO)
    builder = trt.Builder(logger)
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(args.onnx):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise SystemExit("cannot parse %s: %s" % (args.onnx, "; ".join(errors)))
    inp = network.get_input(0)
    shape = tuple(inp.shape)
    batch = shape[0] if shape[0] > 0 else (args.batch or 1)
    imgsz = (int(shape[2]), int(shape[3]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(args.workspace * (1 << 30)))
    profile = None
    if shape[0] == -1:
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, (1, 3) + imgsz, (max(1, batch // 2), 3) + imgsz, (batch, 3) + imgsz)
        config.add_optimization_profile(profile)
    if args.fp16 or args.int8:
        config.set_flag(trt.BuilderFlag.FP16)
    cache_file = os.path.splitext(args.engine)[0] + ".calib.cache"
    if args.int8:
        if not args.calib_images and not os.path.isfile(cache_file):
            raise SystemExit("--int8 needs --calib-images or an existing %s" % cache_file)
        files = yolokit.list_images(args.calib_images) if args.calib_images else []
        files = files[:: max(1, len(files) // args.calib_max)][: args.calib_max]
        config.set_flag(trt.BuilderFlag.INT8)
        if args.calib_images and len(files) < batch:
            raise SystemExit("need at least %d calibration images in %s" % (batch, args.calib_images))
        calibrator = make_calibrator(trt, calibration_batches(files, imgsz, batch), batch, cache_file)
        config.int8_calibrator = calibrator
        if profile is not None and major < 10:  # deprecated in TensorRT 10
            config.set_calibration_profile(profile)
    if args.dla is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = args.dla
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SystemExit("TensorRT failed to build the engine (see the log above)")
    tmp = args.engine + ".tmp"
    with open(tmp, "wb") as f:
        f.write(bytes(serialized))
    os.replace(tmp, args.engine)
    sidecar = yolokit.read_sidecar(args.onnx)
    if sidecar is not None:
        precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
        sidecar.update(format="engine", precision=precision, onnx=os.path.basename(args.onnx), batch=batch,
                       tensorrt=trt.__version__, dla_core=args.dla)  # fmt: skip
        yolokit.write_json(args.engine + ".json", sidecar)
    return args.engine


def main(argv=None):
    print("wrote", build(parse_args(argv)))


if __name__ == "__main__":
    main()
