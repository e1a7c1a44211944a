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
    if not isinstance(model, DetectionModel) or not _is_detect_head(model.model[-1]):
        head = type(model.model[-1]).__name__ if isinstance(model, DetectionModel) else type(model).__name__
        raise YoloPruneError(
            f"'{source}' is not an object detector (it holds a {head}); yolo-prune prunes detection models with a "
            "Detect head (e.g. yolov8n.yaml), not classification, segmentation, pose or OBB models."
        )
    return model.float().eval()


def _is_detect_head(head: nn.Module) -> bool:
    """Plain detection heads only: Segment, Pose, OBB and open-vocabulary heads subclass Detect but are not ours."""
    from ultralytics.nn.modules import Detect, v10Detect

    from .anchor import AnchorDetect

    return type(head) in (Detect, v10Detect) or isinstance(head, AnchorDetect)


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
        cfg_dict = _read_yaml(cfg)
    from .anchor import AnchorDetectionModel, is_anchor_yaml

    check_model_yaml(cfg_dict, name)
    try:
        if is_anchor_yaml(cfg_dict):  # YOLOv5/YOLOv7 anchor-based head: built by our parser (see anchor.py)
            return AnchorDetectionModel(cfg_dict, nc=nc, verbose=False)
        return DetectionModel(cfg_dict, nc=nc, verbose=False)
    except YoloPruneError:
        raise
    except (AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError) as e:  # rows that do not fit
        raise YoloPruneError(f"Cannot build the model in '{name}': {type(e).__name__}: {e}") from None


def _read_yaml(cfg: Path) -> dict:
    from ultralytics.nn.tasks import yaml_model_load

    try:
        cfg_dict = yaml_model_load(cfg)
    except Exception as e:  # malformed YAML: the yaml parser raises several types
        raise YoloPruneError(f"Cannot read the model YAML '{cfg}': {str(e).strip().splitlines()[0]}") from None
    if not isinstance(cfg_dict, dict):
        raise YoloPruneError(f"'{cfg}' is not a model YAML (a mapping with backbone and head).")
    return cfg_dict


def check_model_yaml(cfg: dict, name: str) -> None:
    """Refuse, before Ultralytics evaluates or calls anything from it, a YAML that is not a plain detector.

    Ultralytics `eval`s the `activation:` value and calls whatever each row's module name resolves to; we accept
    only an activation we parse without evaluating (`nn.SiLU()`, `torch.nn.LeakyReLU(0.1)`) and layer classes.
    """
    from .anchor import activation, is_anchor_yaml

    backbone, head = cfg.get("backbone"), cfg.get("head")
    rows = backbone + head if isinstance(backbone, list) and isinstance(head, list) else []
    if not rows or not all(isinstance(r, (list, tuple)) and len(r) == 4 and isinstance(r[2], str) for r in rows):
        raise YoloPruneError(f"'{name}' is not a model YAML: it needs backbone and head lists of [from, n, module, "
                             "args] rows.")  # fmt: skip
    if cfg.get("activation"):
        activation(cfg["activation"])  # raises a YoloPruneError for anything but a torch activation call
    head = rows[-1][2]
    if head not in ("Detect", "v10Detect", "IDetect"):
        raise YoloPruneError(f"'{name}' is not an object detector (its head is {head}); yolo-prune prunes detection "
                             "models with a Detect head (e.g. yolov8n.yaml), not classification, segmentation, pose "
                             "or OBB models.")  # fmt: skip
    if not is_anchor_yaml(cfg):  # our anchor parser only knows its own layer builders
        for i, row in enumerate(rows):
            if not _is_layer_name(row[2]):
                raise YoloPruneError(f"Layer {i} of '{name}' names '{row[2]}', which is not a model layer class.")


def _is_layer_name(name: str) -> bool:
    """True if Ultralytics' parser resolves `name` to an nn.Module class (it would call anything it finds)."""
    import ultralytics.nn.tasks as tasks

    if name.startswith("nn."):
        obj = getattr(nn, name[3:], None)
    elif name.startswith("torchvision.ops."):
        import torchvision

        obj = getattr(torchvision.ops, name[16:], None)
    else:
        obj = vars(tasks).get(name)
    return isinstance(obj, type) and issubclass(obj, nn.Module)


def load_checkpoint(path: str) -> nn.Module:
    """Load an Ultralytics checkpoint (EMA preferred, as Ultralytics does) as a float32 module.

    Nothing from the file is run: Ultralytics checkpoints go through the restricted unpickler (safe_load.py), an
    official YOLOv5/YOLOv7 checkpoint (pickled `models.yolo.*` classes) is imported on the fly (see importer.py).
    """
    from .. import safe_load
    from . import importer

    file = Path(path)
    if not file.is_file():
        raise YoloPruneError(f"Checkpoint '{path}' does not exist.")
    if importer.is_foreign(file):
        return importer.load_foreign(file)
    return safe_load.load_checkpoint(file)[0]
