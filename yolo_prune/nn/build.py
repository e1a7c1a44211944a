"""Resolve a model name, YAML or checkpoint into an Ultralytics DetectionModel."""

from pathlib import Path

from torch import nn
from ultralytics.nn.modules import Detect, v10Detect
from ultralytics.nn.tasks import DetectionModel, yaml_model_load

from .. import safe_load
from ..errors import YoloPruneError
from . import importer
from .anchor import AnchorDetect, AnchorDetectionModel
from .cfg import check_model_yaml, config_path, is_anchor_yaml, read_model_yaml, shipped_configs

__all__ = ["check_model_yaml", "config_path", "load_checkpoint", "load_model", "shipped_configs"]


def load_model(source, nc: int | None = None) -> nn.Module:
    """Return a float32 DetectionModel in eval mode from a YAML name/path, a checkpoint path, or a model.

    Args:
        source: `yolov7.yaml` (ours), `yolov8n.yaml` (Ultralytics), a `.yaml` path, a `.pt` checkpoint, a
            `YOLO` object or an `nn.Module`.
        nc: number of classes for a model built from YAML (default: the YAML's).
    """
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
    if not isinstance(model, DetectionModel) or not _is_detect_head(model.model[-1]):
        head = type(model.model[-1]).__name__ if isinstance(model, DetectionModel) else type(model).__name__
        raise YoloPruneError(
            f"'{source}' is not an object detector (it holds a {head}); yolo-prune prunes detection models with a "
            "Detect head (e.g. yolov8n.yaml), not classification, segmentation, pose or OBB models."
        )
    return model.float().eval()


def _is_detect_head(head: nn.Module) -> bool:
    """Plain detection heads only: Segment, Pose, OBB and open-vocabulary heads subclass Detect but are not ours."""
    return type(head) in (Detect, v10Detect) or isinstance(head, AnchorDetect)


def _from_yaml(name: str, nc: int | None) -> nn.Module:
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
        cfg_dict = read_model_yaml(cfg)
    check_model_yaml(cfg_dict, name)
    try:
        if is_anchor_yaml(cfg_dict):  # YOLOv5/YOLOv7 anchor-based head: built by our parser (see anchor/)
            return AnchorDetectionModel(cfg_dict, nc=nc, verbose=False)
        return DetectionModel(cfg_dict, nc=nc, verbose=False)
    except YoloPruneError:
        raise
    except (AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError) as e:  # rows that do not fit
        raise YoloPruneError(f"Cannot build the model in '{name}': {type(e).__name__}: {e}") from None


def load_checkpoint(path: str) -> nn.Module:
    """Load an Ultralytics checkpoint (EMA preferred, as Ultralytics does) as a float32 module.

    Nothing from the file is run: Ultralytics checkpoints go through the restricted unpickler (safe_load.py), an
    official YOLOv5/YOLOv7 checkpoint (pickled `models.yolo.*` classes) is imported on the fly (see importer.py).
    """
    file = Path(path)
    if not file.is_file():
        raise YoloPruneError(f"Checkpoint '{path}' does not exist.")
    if importer.is_foreign(file):
        return importer.load_foreign(file)
    return safe_load.load_checkpoint(file)[0]
