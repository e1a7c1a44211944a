"""`yolo-prune train`: resolve model, data and weights, run PruneTrainer, print the base-vs-slim summary."""

from __future__ import annotations

import io
import tempfile
from copy import deepcopy
from pathlib import Path

import torch

from ..errors import YoloPruneError
from ..methods.schedule import PruneSettings
from ..nn.build import config_path, load_model
from .checks import check_classes, check_data, check_imgsz, check_reachable, check_train_args

DEFAULT_CFG_NAME = "yolov7-tiny.yaml"
DEMO_DEFAULTS = {"epochs": 3, "imgsz": 160, "batch": 16}  # the README demo: minutes on a 2-core CPU


def run_training(cfg, settings: PruneSettings, data, weights, overrides: dict, measure=None) -> dict:
    """Check everything that can be checked, then train; nothing is written before the checks pass (but a latency
    table, measured by `measure` when --latency has none yet, into the cache)."""
    from .log import summary_table

    overrides = dict(overrides)
    if overrides.get("resume"):  # a last.pt path, or True for the newest run (Ultralytics' rule)
        result = _resume(overrides)
    else:
        result = _train(cfg, settings, data, weights, overrides, measure)
    print("\n" + summary_table(result["rows"]), flush=True)
    return result


def _train(cfg, settings, data, weights, overrides: dict, measure=None) -> dict:
    from .trainer import PruneTrainer

    if data is None:
        overrides = {**DEMO_DEFAULTS, **overrides}
    check_train_args(overrides)
    check_imgsz(settings.imgsz)  # the size FLOPs are counted at
    data_file, info = check_data(data)
    if data is None:
        print(f"yolo-prune: no --data given, training on the embedded demo dataset {data_file}", flush=True)
    base = _initial_model(cfg, weights, info["nc"])
    check_reachable(base, settings, measure)
    trainer = PruneTrainer(overrides={**overrides, "model": _model_argument(cfg, weights), "data": str(data_file)},
                           prune=settings)  # fmt: skip
    base_row = _base_row(base, settings.imgsz)
    if weights is not None:  # mAP before pruning is only meaningful for a trained starting point
        base_row.update(_validate(base, trainer))
    return _finish(trainer, base_row)


def _resume(overrides: dict) -> dict:
    from .trainer import PruneTrainer

    resume = overrides["resume"]
    trainer = PruneTrainer(overrides={**overrides, **({"model": str(resume)} if resume is not True else {})})
    dense = load_model(trainer.args.resume)  # the masked, not yet slim model of last.pt: the base architecture
    result = _finish(trainer, base=None)
    result["rows"].insert(0, _base_row(dense, trainer.prune_settings.imgsz))  # settings as restored from last.pt
    return result


def _base_row(model, imgsz: int) -> dict:
    from ultralytics.utils.torch_utils import get_flops

    return {"model": "base", "gflops": get_flops(model, imgsz), "params": sum(p.numel() for p in model.parameters()),
            "size_mb": _checkpoint_mb(model)}  # fmt: skip


def _initial_model(cfg, weights, nc: int):
    """The model training starts from, built for the dataset's classes (as the trainer will build it)."""
    if weights is None:
        return load_model(cfg or DEFAULT_CFG_NAME, nc=nc)
    model = load_model(weights)
    check_classes(model, nc, weights)
    if cfg is not None:
        reference = load_model(cfg, nc=nc).state_dict()
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        if {k: v.shape for k, v in reference.items()} != shapes:
            raise YoloPruneError(f"--weights {weights} is not a {cfg} model (its layers differ); drop --cfg or "
                                 "give weights of that architecture.")  # fmt: skip
    return model


def _model_argument(cfg, weights) -> str:
    """What Ultralytics gets as `model`: a YAML path or the weights file (PruneTrainer.setup_model reads it safely
    and imports an official YOLOv5/YOLOv7 checkpoint in memory, so nothing is written outside the run)."""
    if weights is None:
        name = cfg or DEFAULT_CFG_NAME
        return str(config_path(name) or name)
    return str(weights)


def _validate(model, trainer) -> dict:
    """Ultralytics' mAP of the starting model, in memory: nothing is loaded from a file and nothing is written."""
    from ultralytics.models.yolo.detect import DetectionValidator

    args = dict(data=trainer.args.data, imgsz=trainer.args.imgsz, batch=trainer.args.batch, device=trainer.args.device,
                rect=True, plots=False, save_json=False, verbose=False, mode="val")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="yolo_prune_val_") as tmp:
        stats = DetectionValidator(args=args, save_dir=Path(tmp))(model=deepcopy(model))
    return {"map50_95": float(stats["metrics/mAP50-95(B)"]), "map50": float(stats["metrics/mAP50(B)"])}


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
