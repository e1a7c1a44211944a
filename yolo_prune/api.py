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
        if "base_ms" in self:
            rows.append(("latency ms", f"{self['base_ms']:.3f}", f"{self['predicted_ms']:.3f}"))
        lines = [f"{a:<12}{b:>12}{c:>12}" for a, b, c in rows]
        if "base_ms" in self:
            lines.append(f"latency cut {1 - self['predicted_ms'] / self['base_ms']:.4f} predicted by the table (target "
                         f"{self['target']}, batch 1 at {self['imgsz']}), FLOPs cut {self['cut']:.4f} -> {self['out']}")
        else:
            lines.append(f"FLOPs cut {self['cut']:.4f} (target {self['target']}, predicted "
                         f"{self['predicted_gflops']:.3f} GFLOPs at {self['imgsz']}) -> {self['out']}")  # fmt: skip
        return "\n".join(lines)


ONE_SHOT_FIELDS = {"imgsz", "round_to", "min_keep", "latency", "backend", "lut"}  # the PruneSettings prune() takes


def prune(model, flops: float | None = None, method: str = "l1", out=None, data=None, **settings) -> PruneReport:
    """One-shot structural prune of `model` to remove `flops` of its FLOPs, or with `latency=L` the fraction L of its
    latency (batch 1 at `imgsz` on `backend`, predicted from the table `lut`, or one measured now and cached); saves a
    slim checkpoint to `out`.

    `settings`: `imgsz` (where FLOPs and latency are counted), `round_to`, `min_keep`, `latency`, `backend`, `lut`
    (PruneSettings) and the method's options (e.g. `random_seed`); `yolo-prune prune --help` lists them. `data`
    (a dataset YAML or a folder of images) is what methods that measure on images (`damage`) measure on.
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

    fields, options, unknown = split_keywords(settings)
    if unknown or set(fields) - ONE_SHOT_FIELDS:
        bad = sorted(set(unknown) | (set(fields) - ONE_SHOT_FIELDS))
        raise YoloPruneError(f"prune() got unknown or training-only arguments {bad}; it takes "
                             f"{sorted(ONE_SHOT_FIELDS)} and the method's options.")  # fmt: skip
    if isinstance(fields.get("lut"), Path):
        fields["lut"] = str(fields["lut"])
    if flops is None and not fields.get("latency"):
        raise YoloPruneError("Give the cut to make: --flops F (fraction of FLOPs) or --latency L (of latency).")
    if flops is not None:
        _check_flops(flops)
    s = PruneSettings(flops=flops or 0.0, method=method, **fields, options=options).validate(one_shot=True)
    if out is not None:
        check_output_path(out)
    base = load_model(model)
    check_imgsz(base, s.imgsz)
    graph = analyze(base, s.imgsz)
    cost = None
    if s.latency:
        from .bench.profile import measure_to_cache
        from .latency.cost import latency_cost

        cost = latency_cost(base, graph, backend=s.backend, lut=s.lut, measure=measure_to_cache)
    budget = Budget(graph, round_to=s.round_to, min_keep=s.min_keep, cost=cost)
    pruner = get_method(method)(graph, budget, s.options)
    target = budget.cost.total() * (1 - s.cut)
    ctx = PruneContext.one_shot(base, graph, budget, target, settings=s)
    wanted = pruner.calibration()
    if wanted is None and data is not None:
        raise YoloPruneError(f"Method '{method}' does not use images; --data is for methods that measure on them "
                             "(damage). Drop --data or choose --method damage.")  # fmt: skip
    if wanted is None:
        masks = pruner.prune_step(ctx)
    else:
        masks = _prune_on_images(pruner, ctx, data, *wanted)
    slim_model = slim(base, graph, masks.masks)
    report = PruneReport(
        base_gflops=graph.gflops(), predicted_gflops=masks.gflops(), slim_gflops=get_flops(slim_model, s.imgsz),
        base_params=_count(base), slim_params=_count(slim_model), target=s.cut, imgsz=s.imgsz, out=str(out),
    )  # fmt: skip
    report["cut"] = 1 - report["slim_gflops"] / report["base_gflops"]
    targets = {"flops_target": s.flops}
    if s.latency:
        report.update(base_ms=budget.cost.total(), predicted_ms=budget.cost.total(masks.masks), backend=s.backend)
        targets = {"latency_target": s.latency, "backend": s.backend, "base_ms": report["base_ms"],
                   "predicted_ms": report["predicted_ms"]}  # fmt: skip
    if out is not None:
        manifest = dict(source=str(model), method=method, options=s.options, **targets, imgsz=s.imgsz,
                        round_to=s.round_to, widths=masks.alive_count(), base_gflops=report["base_gflops"])  # fmt: skip
        save_checkpoint(slim_model, out, manifest)
    report["model"] = slim_model
    return report


def profile(model, backend="onnxruntime", imgsz=640, batch=1, step=8, half=False, runs=10, out=None,
            plan=None) -> str:  # fmt: skip
    """Measure the latency table of `model` on `backend` and write it to `out` (lut.json); returns a summary.
    With `plan` (a folder), measure nothing: write the plan the Jetson kit measures (deploy/jetson/
    profile_latency.py)."""
    from .bench.profile import profile_model, write_plan
    from .errors import YoloPruneError
    from .export.files import write_json
    from .latency.lut import LatencyTable
    from .nn.build import load_model

    if (out is None) == (plan is None):
        raise YoloPruneError("Give --out lut.json (measure here) or --plan FOLDER (for the Jetson kit), one of them.")
    _check_model_file(model)
    _check_imgsz(imgsz)
    _check_out(out or Path(plan) / "plan.json")
    if batch < 1 or runs < 1 or step < 1:
        raise YoloPruneError(f"Need --batch, --runs and --step >= 1, got {batch}, {runs} and {step}.")
    if plan is not None:
        path = write_plan(load_model(model), plan, imgsz=imgsz, batch=batch, step=step)
        return (f"{path}: the plan, with dense.onnx and probe.onnx beside it; on the device run "
                f"`python3 profile_latency.py --plan {plan} --fp16 --out lut.json` (deploy/jetson)")
    data = profile_model(load_model(model), backend=backend, imgsz=imgsz, batch=batch, step=step, half=half,
                         runs=runs)  # fmt: skip
    table = LatencyTable(data, str(out))
    write_json(out, data)
    return (f"{out}: {len(data['sites'])} conv sites on {data['device']} ({data['precision']}), batch {batch} at "
            f"{imgsz}: dense {table.dense_ms:.3f} ms = fixed {table.fixed_ms:.3f} + {table.scale:.3f} x sites")


def _prune_on_images(pruner, ctx, data, count: int, imgsz: int):
    """A method that measures on images: `count` images of `data` at `imgsz`, then its steps with compensation."""
    import torch

    from .errors import YoloPruneError
    from .export.calibration import calibration_array
    from .train.post_training import prune_in_steps

    if data is None:
        raise YoloPruneError(f"Method '{pruner.key}' measures channels on images: give --data (a dataset YAML, whose "
                             "train images are used, or a folder of images).")  # fmt: skip
    ctx.images = torch.from_numpy(calibration_array(data, count, imgsz))
    return prune_in_steps(pruner, ctx, pruner.one_shot_steps)


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
        **kwargs: the pruning settings (PruneSettings' fields: `flops` or `latency` (with `backend`, `lut`),
            `method`, `round_to`, `min_keep`,
            `warmup_frac`, `prune_frac`, `steps_per_epoch`, `compensate`, `distill`, and `flops_imgsz`, the image
            size FLOPs are counted at), the chosen method's options (e.g. `regrow` for effp, `kappa` for asfp), and
            any Ultralytics train argument (epochs, imgsz, batch, device, project, name, resume, ...). The same names
            as the flags of `yolo-prune train --help`, with underscores.

    Returns:
        dict with `best`, `last` checkpoint paths, `save_dir` and the summary `rows` (base and slim).
    """
    from .bench.profile import measure_to_cache
    from .methods.settings import TRAIN_RENAME, PruneSettings, split_keywords
    from .train.run import run_training

    fields, options, overrides = split_keywords(kwargs, TRAIN_RENAME)
    if isinstance(fields.get("lut"), Path):
        fields["lut"] = str(fields["lut"])
    settings = PruneSettings(**fields, options=options).validate()
    return run_training(cfg=cfg, settings=settings, data=data, weights=weights, overrides=overrides,
                        measure=measure_to_cache)  # fmt: skip
