"""Resolve a model name, YAML or checkpoint into an Ultralytics DetectionModel."""

from importlib import resources
from pathlib import Path

from torch import nn

from ..errors import YoloPruneError


def config_path(name: str) -> Path | None:
    """Path of one of our shipped configs (`yolov7.yaml`), or None if `name` is not one of them."""
    candidate = resources.files("yolo_prune.configs") / Path(name).name
    return Path(str(candidate)) if name == Path(name).name and candidate.is_file() else None


def shipped_configs() -> list[str]:
    return sorted(p.name for p in resources.files("yolo_prune.configs").iterdir() if p.name.endswith(".yaml"))


def load_model(source, nc: int | None = None) -> nn.Module:
    """Return a float32 DetectionModel in eval mode from a YAML name/path, a checkpoint path, or a model.

    Args:
        source: `yolov7.yaml` (ours), `yolov8n.yaml` (Ultralytics), a `.yaml` path, a `.pt` checkpoint, a
            `YOLO` object or an `nn.Module`.
        nc: number of classes for a model built from YAML (default: the YAML's).
    """
    from ultralytics.nn.tasks import DetectionModel

    if hasattr(source, "model") and not isinstance(source, nn.Module):  # ultralytics.YOLO facade
        source = source.model
    if isinstance(source, nn.Module):
        model = source
    else:
        source = str(source)
        if source.endswith((".yaml", ".yml")):
            model = _from_yaml(source, nc)
        elif source.endswith(".pt"):
            model = load_checkpoint(source)
        else:
            raise YoloPruneError(
                f"Model '{source}' is neither a .yaml config nor a .pt checkpoint; give e.g. yolov8n.yaml, "
                f"one of {shipped_configs()}, or a path to a .pt file."
            )
    if not isinstance(model, DetectionModel):
        raise YoloPruneError(
            f"'{source}' holds a {type(model).__name__}, not a detection model; yolo-prune prunes object detectors "
            "(DetectionModel with a Detect head)."
        )
    return model.float().eval()


def _from_yaml(name: str, nc: int | None) -> nn.Module:
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    from . import register

    register.register_modules()
    cfg = config_path(name) or Path(name)
    if not cfg.is_file():
        try:  # an Ultralytics model name such as yolov8n.yaml resolves inside the installed package
            cfg_dict = yaml_model_load(name)
        except (FileNotFoundError, OSError):
            cfg_dict = None
        if not cfg_dict:
            raise YoloPruneError(
                f"Unknown model '{name}': not a file, not one of our configs {shipped_configs()}, and not an "
                "Ultralytics model YAML (e.g. yolov8n.yaml, yolo11s.yaml, yolo26n.yaml)."
            )
    else:
        cfg_dict = yaml_model_load(cfg)
    if cfg_dict.get("task", "detect") != "detect" or "head" not in cfg_dict:
        raise YoloPruneError(f"'{name}' is not a detection model YAML.")
    from .anchor import AnchorDetectionModel, is_anchor_yaml

    if is_anchor_yaml(cfg_dict):  # YOLOv5/YOLOv7 anchor-based head: built by our parser (see anchor.py)
        return AnchorDetectionModel(cfg_dict, nc=nc, verbose=False)
    return DetectionModel(cfg_dict, nc=nc, verbose=False)


def load_checkpoint(path: str) -> nn.Module:
    """Load an Ultralytics checkpoint (EMA preferred, as Ultralytics does) as a float32 module.

    An official YOLOv5/YOLOv7 checkpoint (pickled `models.yolo.*` classes) is imported on the fly, without running
    anything from it (see importer.py).
    """
    from ultralytics.nn.tasks import load_checkpoint as ul_load

    from . import importer

    file = Path(path)
    if not file.is_file():
        raise YoloPruneError(f"Checkpoint '{path}' does not exist.")
    if importer.is_foreign(file):
        return importer.load_foreign(file)
    from . import register

    register.register_modules()
    try:
        model, _ = ul_load(str(file), device="cpu")
    except Exception as e:  # unpickling foreign classes, truncated files, non-checkpoints
        raise YoloPruneError(f"Cannot load '{path}' as an Ultralytics checkpoint: {e}") from None
    if not isinstance(model, nn.Module):
        raise YoloPruneError(f"'{path}' does not contain a model.")
    return model
