"""Model YAMLs: our shipped configs by name, reading a YAML, and what a model YAML may contain.

The bottom of `nn`: it imports nothing else of yolo-prune but errors, so the loaders (safe_load.py, build.py) and the
anchor parser can all share one definition of a valid model YAML.
"""

from __future__ import annotations

import ast
from importlib import resources
from pathlib import Path

from torch import nn

from ..errors import YoloPruneError

HEAD_NAMES = ("Detect", "AnchorDetect", "IDetect")  # head names an anchor YAML may use (Detect = YOLOv5's)


def config_path(name: str) -> Path | None:
    """Path of one of our shipped configs (`yolov7.yaml`), or None if `name` is not one of them."""
    candidate = resources.files("yolo_prune.configs") / Path(name).name
    return Path(str(candidate)) if name == Path(name).name and candidate.is_file() else None


def shipped_configs() -> list[str]:
    return sorted(p.name for p in resources.files("yolo_prune.configs").iterdir() if p.name.endswith(".yaml"))


def read_model_yaml(cfg) -> dict:
    """The model dict of a YAML file or one of our config names (`yaml_file` set); one clear error if unreadable."""
    from ultralytics.nn.tasks import yaml_model_load  # as Ultralytics reads it (the model scale from the name)

    path = config_path(str(cfg)) or Path(cfg)
    try:
        d = yaml_model_load(path)
    except Exception as e:  # missing file, or malformed YAML: the yaml parser raises several types
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise YoloPruneError(f"Cannot read the model YAML '{cfg}': {detail}") from None
    if not isinstance(d, dict):
        raise YoloPruneError(f"'{cfg}' is not a model YAML (a mapping with backbone and head).")
    return d


def is_anchor_yaml(d: dict) -> bool:
    """True for a YOLOv5/YOLOv7-style model dict: it has `anchors` and ends with Detect/AnchorDetect/IDetect."""
    if not isinstance(d, dict) or "anchors" not in d or not isinstance(d.get("head"), list) or not d["head"]:
        return False
    head = d["head"][-1]
    return isinstance(head, (list, tuple)) and len(head) == 4 and head[2] in HEAD_NAMES


def activation(spec) -> nn.Module:
    """A torch activation from a YAML spec such as `nn.LeakyReLU(0.1)` (parsed, never evaluated) or a module."""
    if isinstance(spec, nn.Module):
        return spec
    try:
        call = ast.parse(str(spec).strip(), mode="eval").body
        assert isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
        owner = ast.unparse(call.func.value)
        assert owner in ("nn", "torch.nn")
        cls = getattr(nn, call.func.attr)
        assert isinstance(cls, type) and cls.__module__ in ("torch.nn.modules.activation", "torch.nn.modules.linear")
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        return cls(*args, **kwargs)
    except (AssertionError, AttributeError, SyntaxError, TypeError, ValueError):
        raise YoloPruneError(
            f"Activation '{spec}' in the model YAML is not a torch activation call such as nn.LeakyReLU(0.1)."
        ) from None


def check_model_yaml(cfg: dict, name: str) -> None:
    """Refuse, before Ultralytics evaluates or calls anything from it, a YAML that is not a plain detector.

    Ultralytics `eval`s the `activation:` value and calls whatever each row's module name resolves to; we accept
    only an activation we parse without evaluating (`nn.SiLU()`, `torch.nn.LeakyReLU(0.1)`) and layer classes.
    """
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
