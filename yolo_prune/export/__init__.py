"""Deployment export: ONNX of (slim) models and plain TensorRT engines, each with a JSON sidecar saying what it is.

The sidecar (`<file>.json`, e.g. `slim.engine.json`) holds what a runtime needs and what a results table reports:
input size, batch, class names, strides, precision, GFLOPs and parameters of the source model, and the SHA-256 of
the source checkpoint (of its weights when the source is a YAML or a module).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

from ..errors import YoloPruneError

FORMATS = ("onnx", "engine")


def export_model(model, format="onnx", half=False, int8=False, data=None, imgsz=640, batch=1, dynamic=False,
                 workspace=4.0, dla=None, out=None) -> Path:  # fmt: skip
    """Export `model` to ONNX or a TensorRT engine plus its JSON sidecar; return the written model file.

    Args:
        model: model name/YAML/checkpoint path or DetectionModel (see `yolo_prune.nn.build.load_model`).
        format: "onnx" or "engine".
        half: FP16 engine.
        int8: INT8 engine, calibrated on `data` (a dataset YAML, whose train split is used, or an image folder;
            default: the demo dataset).
        data: calibration images for `int8`.
        imgsz: input size (int or (h, w)), a multiple of the model stride.
        batch: batch size (the maximum one with `dynamic`).
        dynamic: dynamic batch axis.
        workspace: TensorRT builder workspace in GiB.
        dla: DLA core (Jetson) for the engine.
        out: output file; default `<model stem>.onnx|.engine` beside a checkpoint, else in the working directory.
    """
    from ..nn.build import load_model
    from .onnx import check_imgsz, export_onnx

    out = Path(out) if out else default_output(model, format)
    _check_options(format, half, int8, dla, batch, workspace, out)
    if format == "engine":
        from .cuda import import_tensorrt

        import_tensorrt()  # fail before any slow work
    net = load_model(model)
    hw = check_imgsz(net, imgsz)
    onnx_file = out.with_suffix(".onnx")
    export_onnx(net, onnx_file, imgsz=hw, batch=batch, dynamic=dynamic)
    common = dict(imgsz=hw, batch=batch, dynamic=dynamic, opset=_opset(onnx_file))
    write_sidecar(onnx_file, describe(net, model, format="onnx", precision="fp32", **common))
    if format == "engine":  # the ONNX stays beside the engine, for trtexec or a rebuild on the device
        from .calibration import calibration_images
        from .tensorrt import build_engine

        images = calibration_images(data) if int8 else None
        facts = build_engine(onnx_file, out, imgsz=hw, batch=batch, dynamic=dynamic, half=half, int8=int8,
                             calib_images=images, workspace=workspace, dla=dla)  # fmt: skip
        write_sidecar(out, describe(net, model, format="engine", precision=_precision(half, int8), onnx=onnx_file.name,
                                    **common, **facts))  # fmt: skip
    return out


def _check_options(format, half, int8, dla, batch, workspace, out: Path):
    if format not in FORMATS:
        raise YoloPruneError(f"Unknown export format '{format}'; choose one of {FORMATS}.")
    if (out.suffix == ".onnx") != (format == "onnx"):
        raise YoloPruneError(f"Output '{out}' does not fit --format {format}: name it *.onnx for ONNX, *.engine else.")
    if format == "onnx" and (half or int8 or dla is not None):
        raise YoloPruneError("--half, --int8 and --dla apply to --format engine; the ONNX stays FP32 for the builder.")
    if batch < 1 or workspace <= 0:
        raise YoloPruneError(f"Batch must be >= 1 and workspace > 0 GiB (got batch={batch}, workspace={workspace}).")


def _precision(half, int8) -> str:
    return "int8" if int8 else "fp16" if half else "fp32"


def _opset(onnx_file) -> int:
    import onnx

    return int(next(o.version for o in onnx.load(str(onnx_file), load_external_data=False).opset_import
                    if o.domain in ("", "ai.onnx")))  # fmt: skip


def default_output(model, format) -> Path:
    suffix = "." + format
    if isinstance(model, (str, Path)):
        source = Path(model)
        return source.with_suffix(suffix) if source.is_file() else Path(source.stem + suffix)
    return Path("model" + suffix)


def source_hash(model, net) -> dict:
    """SHA-256 of the checkpoint file when `model` is one, else of the weights (state_dict tensors, in order)."""
    if isinstance(model, (str, Path)) and str(model).endswith(".pt") and Path(model).is_file():
        digest = hashlib.sha256(Path(model).read_bytes()).hexdigest()
        return {"path": str(Path(model).resolve()), "sha256": digest, "of": "checkpoint file"}
    h = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = str(model) if isinstance(model, (str, Path)) else None
    return {"path": path, "sha256": h.hexdigest(), "of": "weights"}


def describe(net, model, format, imgsz, batch, dynamic, precision, **facts) -> dict:
    """The sidecar content for a model exported from `net` (loaded from `model`)."""
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    from .onnx import INPUT_NAME, OUTPUT_NAME

    h, w = imgsz
    strides = [int(s) for s in net.stride.tolist()]
    anchors = sum((h // s) * (w // s) for s in strides)
    nc = len(net.names)
    batch_dim = "batch" if dynamic else batch
    return {
        "format": format,
        "imgsz": [h, w],
        "batch": batch,
        "dynamic_batch": dynamic,
        "precision": precision,
        "names": {str(k): str(v) for k, v in net.names.items()},
        "strides": strides,
        "gflops": round(get_flops(net, [h, w]), 4),
        "params": int(get_num_params(net)),
        "input": {
            "name": INPUT_NAME,
            "shape": [batch_dim, 3, h, w],
            "dtype": "float32",
            "layout": "NCHW, RGB, 0-1, letterboxed to imgsz with pad 114, centred",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": [batch_dim, 4 + nc, anchors],
            "dtype": "float32",
            "layout": "box centre x, y, width, height in input pixels, then nc sigmoid class scores",
        },  # fmt: skip
        "source": source_hash(model, net),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **facts,
    }


def sidecar_path(file) -> Path:
    file = Path(file)
    return file.with_name(file.name + ".json")


def write_sidecar(file, info: dict) -> Path:
    from .files import write_json

    return write_json(sidecar_path(file), info)


def read_sidecar(file) -> dict | None:
    """The sidecar of an exported file, or None when there is none."""
    import json

    path = sidecar_path(file)
    return json.loads(path.read_text()) if path.is_file() else None
