"""Python API: one function per CLI subcommand, with the same power."""

from __future__ import annotations

from pathlib import Path


def val(model, data=None, imgsz=640, batch=16, json_out=None) -> str:
    """pycocotools COCO mAP (12 standard metrics) beside Ultralytics' own mAP; returns a printable report."""
    from .eval.coco import evaluate, format_report

    _check_imgsz(imgsz)
    _check_out(json_out)
    return format_report(evaluate(model, data=data, imgsz=imgsz, batch=batch, json_out=json_out))


def export(model, format="onnx", half=False, int8=False, data=None, imgsz=640, batch=1, dynamic=False,
           workspace=4.0, dla=None, out=None) -> str:  # fmt: skip
    """ONNX or a plain TensorRT engine plus JSON sidecar; returns the written path."""
    from .export import default_output, export_model

    _check_out(out if out else default_output(model, format))
    path = export_model(model, format=format, half=half, int8=int8, data=data, imgsz=imgsz, batch=batch,
                        dynamic=dynamic, workspace=workspace, dla=dla, out=out)  # fmt: skip
    return str(path)


def bench(models, backend="onnxruntime", imgsz=640, batch=1, warmup=10, runs=50, half=False, json_out=None) -> str:
    """Latency of each model (median/p90/p99, throughput) and a table against the first; returns the table."""
    from .bench import benchmark, format_table

    for m in models if isinstance(models, (list, tuple)) else [models]:
        _check_model_file(m)
    _check_imgsz(imgsz)
    _check_out(json_out)
    return format_table(benchmark(models, backend=backend, imgsz=imgsz, batch=batch, warmup=warmup, runs=runs,
                                  half=half, json_out=json_out))  # fmt: skip


def import_checkpoint(checkpoint, out) -> str:
    """Official YOLOv5/YOLOv7 checkpoint -> Ultralytics checkpoint, without executing foreign code."""
    from .checkpoint import check_output_path
    from .nn.importer import import_checkpoint as _import

    check_output_path(out)
    return str(_import(Path(checkpoint), Path(out)))


class PruneReport(dict):
    """What `prune` did: base and slim GFLOPs/params (predicted and measured), and where it saved."""

    def table(self) -> str:
        rows = [
            ("", "base", "slim"),
            ("GFLOPs", f"{self['base_gflops']:.3f}", f"{self['slim_gflops']:.3f}"),
            ("params (M)", f"{self['base_params'] / 1e6:.3f}", f"{self['slim_params'] / 1e6:.3f}"),
        ]
        lines = [f"{a:<12}{b:>12}{c:>12}" for a, b, c in rows]
        lines.append(f"FLOPs cut {self['cut']:.4f} (target {self['target']}, predicted {self['predicted_gflops']:.3f} "
                     f"GFLOPs at {self['imgsz']}) -> {self['out']}")  # fmt: skip
        return "\n".join(lines)


def prune(model, flops: float, method: str = "l1", out=None, **settings) -> PruneReport:
    """One-shot structural prune of `model` to remove `flops` of its FLOPs; saves a slim checkpoint to `out`.

    `settings`: `imgsz` (where FLOPs are counted), `round_to`, `min_keep` (PruneSettings) and the method's options
    (e.g. `random_seed`); `yolo-prune prune --help` lists them with their defaults.
    """
    from ultralytics.utils.torch_utils import get_flops

    from .checkpoint import check_output_path, save_checkpoint
    from .errors import YoloPruneError
    from .export.onnx import check_imgsz
    from .graph.analyze import analyze
    from .masks.budget import Budget
    from .methods import PruneContext, get_method
    from .methods.settings import PruneSettings, split_keywords
    from .nn.build import load_model
    from .slim.slim import slim

    _check_flops(flops)
    fields, options, unknown = split_keywords(settings)
    if unknown or set(fields) - {"imgsz", "round_to", "min_keep"}:
        bad = sorted(set(unknown) | (set(fields) - {"imgsz", "round_to", "min_keep"}))
        raise YoloPruneError(f"prune() got unknown or training-only arguments {bad}; it takes imgsz, round_to, "
                             "min_keep and the method's options.")  # fmt: skip
    s = PruneSettings(flops=flops, method=method, **fields, options=options).validate(one_shot=True)
    if out is not None:
        check_output_path(out)
    base = load_model(model)
    check_imgsz(base, s.imgsz)
    graph = analyze(base, s.imgsz)
    budget = Budget(graph, round_to=s.round_to, min_keep=s.min_keep)
    pruner = get_method(method)(graph, budget, s.options)
    target = graph.gflops() * (1 - flops)
    masks = pruner.prune_step(PruneContext.one_shot(base, graph, budget, target, settings=s))
    slim_model = slim(base, graph, masks.masks)
    report = PruneReport(
        base_gflops=graph.gflops(), predicted_gflops=masks.gflops(), slim_gflops=get_flops(slim_model, s.imgsz),
        base_params=_count(base), slim_params=_count(slim_model), target=flops, imgsz=s.imgsz, out=str(out),
    )  # fmt: skip
    report["cut"] = 1 - report["slim_gflops"] / report["base_gflops"]
    if out is not None:
        manifest = dict(source=str(model), method=method, options=s.options, flops_target=flops, imgsz=s.imgsz,
                        round_to=s.round_to, widths=masks.alive_count(), base_gflops=report["base_gflops"])  # fmt: skip
        save_checkpoint(slim_model, out, manifest)
    report["model"] = slim_model
    return report


def info(model, imgsz: int = 640) -> dict:
    """GFLOPs, params, prunable channel groups and barriers of `model` (a JSON-able dict)."""
    from .export.onnx import check_imgsz
    from .graph.analyze import analyze
    from .nn.build import load_model

    m = load_model(model)
    check_imgsz(m, imgsz)
    graph = analyze(m, imgsz)
    return {
        "model": str(model),
        "imgsz": imgsz,
        "gflops": graph.gflops(),
        "params": _count(m),
        "groups": graph.summary(),
        "barriers": graph.barriers,
    }


def format_info(info: dict) -> str:
    lines = [f"{info['model']}: {info['gflops']:.3f} GFLOPs at {info['imgsz']}, {info['params'] / 1e6:.3f} M params, "
             f"{len(info['groups'])} prunable channel groups"]  # fmt: skip
    lines += [f"  {g['group']:<24}{g['width']:>6}  {', '.join(g['members'])}" for g in info["groups"]]
    if info["barriers"]:
        lines.append("kept whole (no channel rule): " + ", ".join(info["barriers"]))
    return "\n".join(lines)


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_imgsz(imgsz):
    """Before a model is loaded: a positive multiple of 32, the largest stride of the detectors built here."""
    from .train.checks import check_imgsz

    sides = imgsz if isinstance(imgsz, (list, tuple)) else [imgsz]
    for side in sides:
        check_imgsz(side)


def _check_out(out):
    from .checkpoint import check_writable

    if out:
        check_writable(out)


def _check_model_file(model):
    """A model given as a file (.pt, .onnx, an engine) must exist; names and YAMLs are resolved later."""
    from .errors import YoloPruneError

    if isinstance(model, (str, Path)) and Path(model).suffix in (".pt", ".onnx", ".engine", ".plan", ".trt"):
        if not Path(model).is_file():
            raise YoloPruneError(f"Model file '{model}' does not exist; give the path of a .pt checkpoint, an .onnx "
                                 "file or a TensorRT engine (export one with `yolo-prune export`).")  # fmt: skip


def _check_flops(flops: float):
    from .errors import YoloPruneError

    if not 0 < flops < 1:
        raise YoloPruneError(f"--flops must be a fraction strictly between 0 and 1 (e.g. 0.37), got {flops}.")


def train(cfg=None, data=None, weights=None, **kwargs) -> dict:
    """Train with the Ultralytics trainer while pruning to remove `flops` of the FLOPs; ends with slim weights.

    Args:
        cfg: model YAML (ours by name, Ultralytics' by name, or a path); default yolov7-tiny.yaml.
        data: Ultralytics dataset YAML; default: the embedded demo dataset (generated once, kept on disk).
        weights: initialise from this checkpoint (Ultralytics, or an official YOLOv5/YOLOv7 one, imported).
        **kwargs: the pruning settings (PruneSettings' fields: `flops`, `method`, `round_to`, `min_keep`,
            `warmup_frac`, `prune_frac`, `steps_per_epoch`, `compensate`, `distill`, and `flops_imgsz`, the image
            size FLOPs are counted at), the chosen method's options (e.g. `regrow` for effp, `kappa` for asfp), and
            any Ultralytics train argument (epochs, imgsz, batch, device, project, name, resume, ...). The same names
            as the flags of `yolo-prune train --help`, with underscores.

    Returns:
        dict with `best`, `last` checkpoint paths, `save_dir` and the summary `rows` (base and slim).
    """
    from .methods.settings import TRAIN_RENAME, PruneSettings, split_keywords
    from .train.run import run_training

    fields, options, overrides = split_keywords(kwargs, TRAIN_RENAME)
    settings = PruneSettings(**fields, options=options).validate()
    return run_training(cfg=cfg, settings=settings, data=data, weights=weights, overrides=overrides)
