"""The kit's TensorRT plumbing that runs without TensorRT: real import errors and their hints, batch and copy sizes,
profiles, the FP32 decode tail and the calibration cache key, each checked against yolo-prune's own (the kit
re-implements them because it cannot import yolo-prune), and the ONNX Runtime runner's two timings."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from yolo_prune.export import calibration, export_model, trt_plan


@pytest.mark.parametrize("module, message, hint", [
    ("pycuda", "numpy.core.multiarray failed to import", "--no-build-isolation"),
    ("pycuda", "module compiled against API version 0x10 but this version of numpy is 0xd", "--no-build-isolation"),
    ("pycuda", "libcuda.so.1: cannot open shared object file: No such file or directory", "/usr/local/cuda/bin"),
    ("pycuda", "No module named 'pycuda'", "section 2"),
    ("tensorrt", "No module named 'tensorrt'", "python3-libnvinfer"),
    ("tensorrt", "numpy.core.multiarray failed to import", "pip uninstall numpy"),
])  # fmt: skip
def test_import_hint_follows_the_real_error(trtkit, module, message, hint):
    assert hint in trtkit.import_hint(module, message)


def test_missing_tensorrt_exits_with_the_real_import_error(kit_dir):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: this checks the message on machines without it")
    except ImportError:
        pass
    done = subprocess.run([sys.executable, str(kit_dir / "benchmark.py"), "--model", "missing.engine"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0 and "model file not found" in done.stderr
    code = "import sys; sys.path.insert(0, %r); import trtkit; trtkit.import_tensorrt_and_pycuda()" % str(kit_dir)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "cannot import tensorrt: No module named 'tensorrt'" in done.stderr and "python3-libnvinfer" in done.stderr


@pytest.mark.parametrize("version, ok", [("8.5.2.2", True), ("10.3.0", True), ("11.1.0", True), ("8.2.1", False),
                                         ("12.0", False)])  # fmt: skip
def test_kit_tensorrt_versions(trtkit, version, ok):
    if ok:
        trtkit.check_version(version)
    else:
        with pytest.raises(SystemExit, match="not supported"):
            trtkit.check_version(version)


def test_run_batch_and_copy_sizes(trtkit):
    profile = [(1, 3, 64, 64), (8, 3, 64, 64), (8, 3, 64, 64)]
    assert trtkit.run_batch(None, (-1, 3, 64, 64), profile) == 8  # default: the largest, buffers sized for it
    assert trtkit.run_batch(2, (-1, 3, 64, 64), profile) == 2
    assert trtkit.run_batch(None, (4, 3, 64, 64), None) == trtkit.run_batch(4, (4, 3, 64, 64), None) == 4
    with pytest.raises(SystemExit, match="fixed batch of 4"):
        trtkit.run_batch(1, (4, 3, 64, 64), None)
    with pytest.raises(SystemExit, match="batches 1 to 8"):
        trtkit.run_batch(16, (-1, 3, 64, 64), profile)
    # detect.py feeds one image to a batch-8 engine: one image's worth in, one out
    buffer_in, buffer_out = 8 * 3 * 640 * 640, 8 * 84 * 8400
    assert trtkit.used_elements((8, 3, 640, 640), 1) * 8 == buffer_in
    assert trtkit.used_elements((1, 84, 8400), 1) * 8 == buffer_out
    assert trtkit.used_elements((8, 84, 8400), 8) == buffer_out


def test_profiles_equal_yolo_prunes(trtkit):
    for batch, imgsz in [(1, (640, 640)), (8, (384, 640))]:
        assert trtkit.optimization_profile(batch, imgsz) == trt_plan.optimization_profile(batch, imgsz)
        assert trtkit.calibration_profile(batch, imgsz) == trt_plan.calibration_profile(batch, imgsz)
        low, opt, high = trtkit.calibration_profile(batch, imgsz)
        assert low == opt == high and opt[0] == batch


@pytest.mark.parametrize("name, dynamic", [("yolov8n.yaml", False), ("yolov8n.yaml", True),
                                           ("yolov7-tiny.yaml", False)])  # fmt: skip
def test_kit_decode_tail_equals_yolo_prunes(trtkit, tmp_path, name, dynamic):
    onnx_file = export_model(name, imgsz=64, batch=2, dynamic=dynamic, out=tmp_path / "m.onnx")
    model = onnx.load(str(onnx_file))
    outputs = [o.name for o in model.graph.output]
    ours = trt_plan.decode_tail(trt_plan.onnx_nodes(model), outputs)
    as_tuples = [(n.name, n.is_conv, list(n.inputs), list(n.outputs)) for n in trt_plan.onnx_nodes(model)]
    assert trtkit.decode_tail(as_tuples, outputs) == ours and len(ours) >= 20


def test_kit_calibration_key_equals_yolo_prunes(trtkit, coco8_images, tmp_path):
    onnx_file = tmp_path / "slim.onnx"
    onnx_file.write_bytes(b"an onnx")
    images = [str(f) for f in coco8_images[:3]]
    key = trtkit.calibration_key(str(onnx_file), images)
    assert key == calibration.calibration_key(onnx_file, images)  # a cache moves between host and device
    assert trtkit.calibration_key(str(onnx_file), [])["images_sha256"] is None


def test_kit_cache_reuse_rules(trtkit, coco8_images, tmp_path):
    onnx_file, cache = tmp_path / "m.onnx", str(tmp_path / "m.calib.cache")
    onnx_file.write_bytes(b"v1")
    images = [str(f) for f in coco8_images[:2]]
    key, no_images = trtkit.calibration_key(str(onnx_file), images), trtkit.calibration_key(str(onnx_file), [])
    assert not trtkit.reuse_cache(key, key, cache)  # no cache file yet
    with pytest.raises(SystemExit, match="needs --calib-images"):
        trtkit.reuse_cache(no_images, None, cache)
    open(cache, "wb").write(b"TRT-8502-EntropyCalibration2")
    assert trtkit.reuse_cache(key, key, cache) and trtkit.reuse_cache(no_images, key, cache)
    assert not trtkit.reuse_cache(trtkit.calibration_key(str(onnx_file), images[:1]), key, cache)  # new images
    onnx_file.write_bytes(b"v2")
    with pytest.raises(SystemExit, match="not made for this ONNX"):
        trtkit.reuse_cache(trtkit.calibration_key(str(onnx_file), []), key, cache)
    assert trtkit.read_key(cache) is None
    shutil.copy(cache, cache + ".json")  # not JSON: no key
    assert trtkit.read_key(cache) is None


def test_onnx_runner_reports_compute_and_end_to_end(runtimes, tmp_path):
    onnx_file = export_model("yolov8n.yaml", imgsz=64, batch=2, out=tmp_path / "n.onnx")
    with runtimes.load_runtime(str(onnx_file)) as model:
        assert model.batch == 2 and model.imgsz == (64, 64)
        x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
        output, (compute, total) = model(x)
        assert output.shape[0] == 2 and 0 < compute <= total
    with pytest.raises(SystemExit, match="fixed batch of 2"):
        runtimes.load_runtime(str(onnx_file), batch=1)


def test_kit_benchmark_writes_both_columns_and_the_batch_run(kit_dir, tmp_path):
    onnx_file = export_model("yolov8n.yaml", imgsz=64, batch=2, out=tmp_path / "n.onnx")
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(kit_dir / "benchmark.py"), "--model", str(onnx_file), "--warmup", "1",
                           "--runs", "3", "--out", str(out)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["batch"] == 2 and result["latency_ms"]["runs"] == result["end_to_end_ms"]["runs"] == 3
    assert result["latency_ms"]["median_ms"] <= result["end_to_end_ms"]["median_ms"]
    assert "compute median" in done.stdout and "end-to-end median" in done.stdout
