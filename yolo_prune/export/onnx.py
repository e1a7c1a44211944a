"""ONNX export of (slim) DetectionModels with Ultralytics' Detect output, simplified, fixed or dynamic batch.

The graph has one input `images` (B, 3, H, W) float32 RGB in [0, 1], letterboxed with pad value 114, and one output
`output0` (B, 4 + nc, N): box centre x, y, width, height in input pixels, then the class scores (already sigmoided).
That is what Ultralytics' ONNX export gives, so Ultralytics can load the file too (its metadata keys are written).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

from ..errors import YoloPruneError

OPSET = 17  # highest opset the TensorRT 8.5 ONNX parser (JetPack 5) reads
INPUT_NAME, OUTPUT_NAME = "images", "output0"


def imgsz_pair(imgsz) -> tuple[int, int]:
    """(height, width) from an int or a pair."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    return int(h), int(w)


def check_imgsz(model, imgsz) -> tuple[int, int]:
    """(h, w), or one error when a side is not a positive multiple of the model's largest stride."""
    stride = int(max(model.stride.tolist()))
    h, w = imgsz_pair(imgsz)
    if min(h, w) <= 0 or h % stride or w % stride:
        raise YoloPruneError(f"Image size {imgsz} must be a positive multiple of the model stride {stride} (e.g. 640).")
    return h, w


def export_ready(model: torch.nn.Module) -> torch.nn.Module:
    """A fused float32 eval copy whose Detect head returns only the decoded (B, 4 + nc, N) tensor.

    End-to-end (NMS-free) heads are switched to their one-to-many branch, so every exported model has the same
    output and the same NMS on the device.
    """
    from ultralytics.nn.modules import Detect

    model = copy.deepcopy(model).float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, Detect) and getattr(m, "one2one_cv2", None) is not None and m.end2end:
            m.end2end = False
    model = model.fuse(verbose=False)
    for m in model.modules():
        if isinstance(m, Detect):
            m.export, m.format, m.dynamic, m.shape = True, "onnx", False, None  # anchors are constant at fixed H, W
    return model


def export_onnx(model, file, imgsz=640, batch=1, dynamic=False, simplify=True, opset=OPSET) -> Path:
    """Write `model` as ONNX to `file` (atomically) and return the path.

    Args:
        model: a DetectionModel (float32; it is not modified).
        file: output .onnx path.
        imgsz: input size, int or (h, w), multiple of the model stride.
        batch: batch size of the graph (with `dynamic`, the example batch; the axis is then free).
        dynamic: make the batch axis dynamic.
        simplify: run onnxslim.
        opset: ONNX opset.
    """
    import onnx

    from .files import publish, temp_path_for

    h, w = check_imgsz(model, imgsz)
    if batch < 1:
        raise YoloPruneError(f"Batch size must be >= 1 (got {batch}).")
    net = export_ready(model)
    example = torch.zeros(batch, 3, h, w)
    net(example)  # builds the anchors at this size
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None
    file = Path(file)
    tmp = temp_path_for(file)
    try:
        with warnings.catch_warnings():  # the head's shape check is a Python bool under tracing: constant, as meant
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(net, example, str(tmp), opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes=axes, dynamo=False)  # fmt: skip
        proto = onnx.load(str(tmp))
        if simplify:
            import onnxslim

            proto = onnxslim.slim(proto)
        _set_metadata(proto, model, (h, w), batch)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        publish(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
    return file


def _set_metadata(proto, model, imgsz, batch):
    """Ultralytics' metadata keys, so `YOLO('model.onnx')` knows names, stride and size."""
    import ultralytics

    meta = {
        "description": "yolo-prune export of an Ultralytics DetectionModel",
        "author": "yolo-prune",
        "version": ultralytics.__version__,
        "task": "detect",
        "stride": int(max(model.stride.tolist())),
        "batch": batch,
        "imgsz": list(imgsz),
        "names": {int(k): str(v) for k, v in model.names.items()},
        "channels": 3,
        "dynamic": False,  # to Ultralytics, dynamic means a free H and W too; here only the batch axis may be free
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, str(v)
