"""Python API: one function per CLI subcommand, with the same power."""

from __future__ import annotations

from pathlib import Path


def val(model, data=None, imgsz=640, batch=16, json_out=None) -> str:
    """pycocotools COCO mAP (12 standard metrics) beside Ultralytics' own mAP; returns a printable report."""
    from .eval.coco import evaluate, format_report

    return format_report(evaluate(model, data=data, imgsz=imgsz, batch=batch, json_out=json_out))


def export(model, format="onnx", half=False, int8=False, data=None, imgsz=640, batch=1, dynamic=False,
           workspace=4.0, dla=None, out=None) -> str:  # fmt: skip
    """ONNX or a plain TensorRT engine plus JSON sidecar; returns the written path."""
    from .export import export_model

    path = export_model(model, format=format, half=half, int8=int8, data=data, imgsz=imgsz, batch=batch,
                        dynamic=dynamic, workspace=workspace, dla=dla, out=out)  # fmt: skip
    return str(path)


def bench(models, backend="onnxruntime", imgsz=640, batch=1, warmup=10, runs=50, half=False, json_out=None) -> str:
    """Latency of each model (median/p90/p99, throughput) and a table against the first; returns the table."""
    from .bench import benchmark, format_table

    return format_table(benchmark(models, backend=backend, imgsz=imgsz, batch=batch, warmup=warmup, runs=runs,
                                  half=half, json_out=json_out))  # fmt: skip


def import_checkpoint(checkpoint, out) -> str:
    """Official YOLOv5/YOLOv7 checkpoint -> Ultralytics checkpoint, without executing foreign code."""
    from .nn.importer import import_checkpoint as _import

    return str(_import(Path(checkpoint), Path(out)))
