"""`yolo-prune train`: resolve model, data and weights, run PruneTrainer, print the base-vs-slim summary."""

from __future__ import annotations

import io
from copy import deepcopy
from pathlib import Path

import torch
from ultralytics.utils import LOGGER, SETTINGS

from ..checkpoint import save_checkpoint
from ..errors import YoloPruneError
from ..methods.schedule import PruneSettings
from ..nn.build import config_path, load_model

DEFAULT_CFG_NAME = "yolov7-tiny.yaml"
DEMO_DEFAULTS = {"epochs": 3, "imgsz": 160, "batch": 16}  # the README demo: minutes on a 2-core CPU


def run_training(cfg, settings: PruneSettings, data, weights, overrides: dict) -> dict:
    from ultralytics.utils.torch_utils import get_flops

    from .log import summary_table
    from .trainer import PruneTrainer

    overrides = dict(overrides)
    if overrides.get("resume"):  # a last.pt path, or True for the newest run (Ultralytics' rule)
        resume = overrides["resume"]
        trainer = PruneTrainer(overrides={"resume": resume, **({"model": str(resume)} if resume is not True else {})})
        return _finish(trainer, base=None)
    if data is None:
        from ..demo_data import ensure_demo_dataset

        data = ensure_demo_dataset()
        print(f"yolo-prune: no --data given, training on the embedded demo dataset {data}", flush=True)
        overrides = {**DEMO_DEFAULTS, **overrides}
    elif not Path(str(data)).exists() and not str(data).endswith(".yaml"):
        raise YoloPruneError(f"Dataset '{data}' not found; give an Ultralytics dataset YAML.")
    base = _initial_model(cfg, weights)
    model_arg = _model_argument(cfg, weights, base)
    trainer = PruneTrainer(overrides={**overrides, "model": model_arg, "data": str(data)}, prune=settings)
    if weights is None:  # built for the dataset's classes, as the trainer will build it
        base = load_model(cfg or DEFAULT_CFG_NAME, nc=trainer.data["nc"])
    base_row = {
        "model": "base",
        "gflops": get_flops(base, settings.imgsz),
        "params": sum(p.numel() for p in base.parameters()),
        "size_mb": _checkpoint_mb(base),
    }
    if weights is not None:  # mAP before pruning is only meaningful for a trained starting point
        base_row.update(_validate(model_arg, trainer))
    result = _finish(trainer, base_row)
    print("\n" + summary_table(result["rows"]), flush=True)
    return result


def _initial_model(cfg, weights):
    if weights is None:
        return load_model(cfg or DEFAULT_CFG_NAME)
    model = load_model(weights)
    if cfg is not None:
        reference = load_model(cfg, nc=model.nc).state_dict()
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        if {k: v.shape for k, v in reference.items()} != shapes:
            raise YoloPruneError(f"--weights {weights} is not a {cfg} model (its layers differ); drop --cfg or "
                                 "give weights of that architecture.")  # fmt: skip
    return model


def _model_argument(cfg, weights, base) -> str:
    """What Ultralytics gets as `model`: a YAML path, or an Ultralytics checkpoint (imported if it was foreign)."""
    if weights is None:
        name = cfg or DEFAULT_CFG_NAME
        return str(config_path(name) or name)
    if _is_ultralytics_checkpoint(weights):
        return str(weights)
    out = Path(SETTINGS["weights_dir"]) / f"{Path(weights).stem}-imported.pt"
    save_checkpoint(base, out, {"imported_from": str(weights)})
    LOGGER.info(f"yolo-prune: imported {weights} -> {out}")
    return str(out)


def _is_ultralytics_checkpoint(path) -> bool:
    try:
        from ultralytics.nn.tasks import load_checkpoint

        load_checkpoint(str(path))
        return True
    except Exception:
        return False


def _validate(model_path: str, trainer) -> dict:
    from ultralytics import YOLO

    metrics = YOLO(model_path).val(data=trainer.args.data, imgsz=trainer.args.imgsz, batch=trainer.args.batch,
                                   plots=False, verbose=False, device=trainer.args.device)  # fmt: skip
    return {"map50_95": float(metrics.box.map), "map50": float(metrics.box.map50)}


def _finish(trainer, base: dict | None) -> dict:
    from ultralytics.utils.torch_utils import get_flops

    trainer.train()
    rows = [base] if base else []
    best = trainer.best if trainer.best.exists() else trainer.last
    if best.exists():
        model = load_model(best)
        metrics = trainer.metrics or {}
        rows.append({
            "model": "slim" if trainer.pruner is not None else "trained",
            "gflops": get_flops(model, trainer.prune_settings.imgsz),
            "params": sum(p.numel() for p in model.parameters()),
            "map50_95": metrics.get("metrics/mAP50-95(B)"),
            "map50": metrics.get("metrics/mAP50(B)"),
            "size_mb": best.stat().st_size / 1e6,
        })  # fmt: skip
    return {"best": trainer.best, "last": trainer.last, "save_dir": trainer.save_dir, "rows": rows}


def _checkpoint_mb(model) -> float:
    """Size of `model` as a stripped Ultralytics checkpoint (FP16 weights), for a like-for-like size column."""
    buffer = io.BytesIO()
    torch.save({"model": deepcopy(model).half()}, buffer)
    return buffer.tell() / 1e6
