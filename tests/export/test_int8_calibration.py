"""INT8 calibration data: batches of the right shape and dtype, pre-processed exactly as Ultralytics does at predict
time. The calibrator and engine build themselves need TensorRT, pycuda and a GPU: those tests skip without them."""

import cv2
import numpy as np
import pytest
from ultralytics.data.augment import LetterBox

from yolo_prune.errors import YoloPruneError
from yolo_prune.export.tensorrt import calibration_batches, calibration_images, preprocess


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


def test_entropy_calibrator_feeds_the_gpu_and_keeps_a_cache(coco8_images, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (CUDA machines only)")
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed (CUDA machines only)")
    from yolo_prune.export.tensorrt import entropy_calibrator

    cache = tmp_path / "m.calib.cache"
    calibrator = entropy_calibrator(trt, calibration_batches(coco8_images, 160, 2), 2, cache)
    assert isinstance(calibrator, trt.IInt8EntropyCalibrator2) and calibrator.get_batch_size() == 2
    pointers = [calibrator.get_batch(["images"]) for _ in range(3)]
    assert all(isinstance(p[0], int) and p[0] > 0 for p in pointers[:2]) and pointers[2] is None
    assert calibrator.read_calibration_cache() is None
    calibrator.write_calibration_cache(b"TRT-cache")
    assert calibrator.read_calibration_cache() == b"TRT-cache" and cache.read_bytes() == b"TRT-cache"
