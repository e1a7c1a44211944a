"""INT8 calibration data: batches of the right shape and dtype, pre-processed exactly as Ultralytics does at predict
time; the calibration cache key and when a cache may be reused. The calibrator itself needs TensorRT, pycuda and a
GPU: that test skips without them."""

import shutil

import cv2
import numpy as np
import pytest
from ultralytics.data.augment import LetterBox

from yolo_prune.errors import YoloPruneError
from yolo_prune.export import calibration
from yolo_prune.export.calibration import calibration_batches, calibration_images, preprocess
from yolo_prune.export.trt_plan import calibration_profile, optimization_profile


def reference(file, imgsz):
    """Ultralytics' predict pre-processing of one image: LetterBox(auto=False), BGR->RGB, HWC->CHW, /255."""
    image = LetterBox(imgsz, auto=False)(image=cv2.imread(str(file)))
    return image[..., ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0


def test_batches_have_shape_dtype_and_ultralytics_preprocessing(coco8_images):
    imgsz = (160, 224)  # not square: height and width must not be swapped anywhere
    batches = list(calibration_batches(coco8_images, imgsz, batch=3))
    assert len(batches) == 1  # 4 images, batch 3: only full batches, the rest is dropped
    (batch,) = batches
    assert batch.shape == (3, 3, 160, 224) and batch.dtype == np.float32 and batch.flags.c_contiguous
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    for array, file in zip(batch, coco8_images[:3]):
        np.testing.assert_allclose(array, reference(file, imgsz), atol=1e-6)


def test_letterbox_geometry_pads_grey_and_keeps_rgb_order():
    image = np.zeros((100, 400, 3), np.uint8)
    image[..., 2] = 255  # pure red in BGR
    tensor = preprocess(image, (320, 320))  # 400x100 -> 320x80, centred: 120 grey rows above and below
    assert tensor.shape == (3, 320, 320)
    np.testing.assert_allclose(tensor[:, :120], 114 / 255, atol=1e-7)
    np.testing.assert_allclose(tensor[:, 200:], 114 / 255, atol=1e-7)
    np.testing.assert_allclose(tensor[:, 120:200].mean(axis=(1, 2)), [1.0, 0.0, 0.0], atol=1e-6)  # RGB: red first


def test_calibration_images_from_a_dataset_yaml_or_a_folder(coco128, coco8, tmp_path):
    train = sorted((coco128 / "images" / "train2017").glob("*.jpg"))
    picked = calibration_images(coco128 / "data.yaml", max_images=50)
    assert picked == train[::2][:50]  # spread over the split (128 // 50 = every 2nd), not the first 50
    assert calibration_images(coco8 / "images" / "val") == sorted((coco8 / "images" / "val").glob("*.jpg"))
    with pytest.raises(YoloPruneError, match="No calibration images"):
        calibration_images(tmp_path)


def test_calibration_needs_one_full_batch(coco8_images):
    with pytest.raises(YoloPruneError, match="at least one full batch"):
        calibration_batches(coco8_images, 160, batch=8)


@pytest.mark.parametrize("batch", [1, 3])
def test_calibration_batches_fill_the_calibration_profile(coco8_images, batch):
    """The calibrator feeds exactly the calibration profile's opt shape, which TensorRT calibrates at."""
    imgsz = (96, 128)
    low, opt, high = calibration_profile(batch, imgsz)
    assert low == opt == high == (batch, 3, *imgsz)
    shapes = {b.shape for b in calibration_batches(coco8_images, imgsz, batch)}
    assert shapes == {opt}
    # the engine's own profile reaches the same batch and is tuned there, not at batch // 2
    assert optimization_profile(batch, imgsz) == ((1, 3, *imgsz), opt, opt)


@pytest.fixture
def calib_files(coco8_images, tmp_path):
    """An ONNX stand-in and copies of two images, so the test may change them."""
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"network v1")
    images = [tmp_path / f"{i}.jpg" for i in range(2)]
    for src, dst in zip(coco8_images, images):
        shutil.copy(src, dst)
    return onnx_file, images


def test_calibration_key_follows_the_onnx_and_the_images(calib_files):
    onnx_file, images = calib_files
    key = calibration.calibration_key(onnx_file, images)
    assert key == calibration.calibration_key(onnx_file, list(images))  # deterministic
    assert key["onnx_sha256"] == calibration.file_sha256(onnx_file) and len(key["images_sha256"]) == 64
    assert calibration.calibration_key(onnx_file, images[::-1])["images_sha256"] != key["images_sha256"]
    assert calibration.calibration_key(onnx_file, images[:1])["images_sha256"] != key["images_sha256"]
    assert calibration.calibration_key(onnx_file, None)["images_sha256"] is None
    onnx_file.write_bytes(b"network v2 (re-pruned, same name)")
    assert calibration.calibration_key(onnx_file, images)["onnx_sha256"] != key["onnx_sha256"]
    images[0].write_bytes(images[1].read_bytes())
    assert calibration.calibration_key(onnx_file, images)["images_sha256"] != key["images_sha256"]


def test_cache_reused_only_for_the_same_onnx_and_images(calib_files):
    onnx_file, images = calib_files
    key = calibration.calibration_key(onnx_file, images)
    other_data = calibration.calibration_key(onnx_file, images[:1])
    no_images = calibration.calibration_key(onnx_file, None)
    assert calibration.reuse_cache(key, key, cache_exists=True)
    assert not calibration.reuse_cache(key, key, cache_exists=False)
    assert not calibration.reuse_cache(key, other_data, cache_exists=True)  # new --data: recalibrate
    assert not calibration.reuse_cache(key, None, cache_exists=True)  # cache of unknown origin: recalibrate
    assert calibration.reuse_cache(no_images, key, cache_exists=True)  # no images: the cache of this ONNX stands in
    onnx_file.write_bytes(b"re-pruned")
    repruned = calibration.calibration_key(onnx_file, images)
    assert not calibration.reuse_cache(repruned, key, cache_exists=True)
    for stored, exists, message in [(key, True, "another ONNX"), (None, True, "no key"), (None, False, "needs")]:
        with pytest.raises(YoloPruneError, match=message):
            calibration.reuse_cache(calibration.calibration_key(onnx_file, None), stored, cache_exists=exists)


def test_key_file_sits_beside_the_cache_and_a_damaged_one_counts_as_none(tmp_path):
    cache = calibration.cache_path(tmp_path / "slim_int8.engine")
    assert cache.name == "slim_int8.calib.cache" and calibration.key_path(cache).name == "slim_int8.calib.cache.json"
    assert calibration.read_key(cache) is None
    calibration.key_path(cache).write_text("{not json")
    assert calibration.read_key(cache) is None
    calibration.key_path(cache).write_text('{"onnx_sha256": "ab"}')
    assert calibration.read_key(cache) == {"onnx_sha256": "ab"}


def test_entropy_calibrator_feeds_the_gpu_in_the_primary_context(coco8_images, calib_files, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (CUDA machines only)")
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed (CUDA machines only)")
    from yolo_prune.export.cuda import cuda_scope

    onnx_file, images = calib_files
    cache = tmp_path / "m.calib.cache"
    key = calibration.calibration_key(onnx_file, images)
    with cuda_scope() as (cuda, scope):
        assert cuda.Context.get_current() is not None  # pushed by us, not by pycuda.autoinit
        scope.calibrator = calibration.entropy_calibrator(trt, cuda, calibration_batches(coco8_images, 160, 2), 2,
                                                          cache, key, reuse=False)  # fmt: skip
        calibrator = scope.calibrator
        assert isinstance(calibrator, trt.IInt8EntropyCalibrator2) and calibrator.get_batch_size() == 2
        pointers = [calibrator.get_batch(["images"]) for _ in range(3)]
        assert all(isinstance(p[0], int) and p[0] > 0 for p in pointers[:2]) and pointers[2] is None
        assert calibrator.read_calibration_cache() is None
        calibrator.write_calibration_cache(b"TRT-cache")
        assert cache.read_bytes() == b"TRT-cache" and calibration.read_key(cache) == key
        assert calibrator.read_calibration_cache() is None  # written, but not reused in this build
        del calibrator
