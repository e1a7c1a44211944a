"""Import official YOLOv5 / YOLOv7 checkpoints without running anything from them.

Those checkpoints are pickles of the original repositories' classes (`models.yolo.Model`, `models.common.Conv`, ...).
Unpickling them normally imports and runs that code. Here a restricted unpickler maps each known class onto an inert
stand-in that only records the pickled attributes, rebuilds tensors through torch's own storage loader, and refuses
every other global with a `YoloPruneError` naming it, before anything from the file is called. The model is then
rebuilt from the checkpoint's own `yaml` dict with yolo-prune's classes (`AnchorDetectionModel`), the weights are
copied by name (YOLOv7 RepConv's `rbr_*` branches renamed to Ultralytics' RepConv), and BatchNorm settings,
activations, class names, anchors and strides are taken from the checkpoint and checked against the rebuild.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import inspect
import pickle
import types
from collections import OrderedDict
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import save_checkpoint
from ..errors import YoloPruneError
from .anchor import AnchorDetectionModel
from .cfg import is_anchor_yaml

# classes of the original repositories that we can rebuild (YAML module names plus the containers around them)
FOREIGN_CLASSES = {
    "models.yolo": {"Model", "DetectionModel", "Detect", "IDetect"},
    "models.common": {
        "Conv", "C3", "Bottleneck", "SPPF", "SPP", "Focus", "Concat", "MP", "SP", "SPPCSPC", "RepConv",
        "ImplicitA", "ImplicitM",
    },
}  # fmt: skip
_MODEL_CLASSES = {"models.yolo.Model", "models.yolo.DetectionModel"}
# plain data some checkpoints carry beside the model (numpy best_fitness, Path/Namespace options): never read
_OPAQUE = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("argparse", "Namespace"),
}  # fmt: skip
_RENAMES = (  # YOLOv7 RepConv -> Ultralytics RepConv
    (".rbr_dense.0.", ".conv1.conv."),
    (".rbr_dense.1.", ".conv1.bn."),
    (".rbr_1x1.0.", ".conv2.conv."),
    (".rbr_1x1.1.", ".conv2.bn."),
    (".rbr_identity.", ".bn."),
)


class _Stub:
    """An object of a foreign class, kept as its pickled attribute dict; no code of the foreign class exists here."""

    foreign_name = "?"  # the class attribute is the truth; read it through _foreign_name (the state could shadow it)

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"_state": state})

    def __repr__(self):
        return f"<stub of {_foreign_name(self)}>"


class _Opaque:
    """Data beside the model that we never read (numpy scalars, paths): accepts any construction, holds nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


_STUBS: dict[str, type] = {}


def _foreign_name(obj) -> str | None:
    return type(obj).foreign_name if isinstance(obj, _Stub) else None


def _stub_class(qualified: str) -> type:
    if qualified not in _STUBS:
        _STUBS[qualified] = type(qualified.rpartition(".")[2], (_Stub,), {"foreign_name": qualified})
    return _STUBS[qualified]


def _tensor(storage, offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor_v2 without requires_grad, backward hooks or metadata (never needed here)."""
    return torch._utils._rebuild_tensor(storage, offset, size, stride)


def _parameter(data, *_ignored):
    return data


_CALLABLES = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch", "Size"): torch.Size,
}


def _safe_global(module: str, name: str):
    """What a pickled global may become: a stand-in, a known-harmless callable, or a refusal."""
    if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names (protocol 2 pickles), as pickle maps them
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    if name in FOREIGN_CLASSES.get(module, ()):
        return _stub_class(f"{module}.{name}")
    if (module, name) in _CALLABLES:
        return _CALLABLES[(module, name)]
    if (module, name) in _OPAQUE:
        return _Opaque
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if module.startswith("torch.nn.modules.") and _is_torch_layer(name):
        return _stub_class(f"torch.nn.{name}")
    if module.split(".")[0] in ("ultralytics", "yolo_prune"):
        raise YoloPruneError(
            f"The checkpoint is already an Ultralytics checkpoint (it pickles {module}.{name}); use it as it is, it "
            "needs no import (nothing from the file was run)."
        )
    if module.split(".")[0] == "models":
        raise YoloPruneError(
            f"The checkpoint uses {module}.{name}, which yolo-prune cannot rebuild (it imports YOLOv5/YOLOv7 models "
            f"made of {', '.join(sorted(FOREIGN_CLASSES['models.common']))}); nothing from the file was run."
        )
    raise YoloPruneError(
        f"Refused to load the checkpoint: its pickle references {module}.{name}, which is not a YOLOv5/YOLOv7 model "
        "class, a torch layer or tensor data; nothing from the file was run."
    )


def _is_torch_layer(name: str) -> bool:
    cls = getattr(nn, name, None)
    return isinstance(cls, type) and issubclass(cls, nn.Module)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return _safe_global(module, name)


def _restricted_load(file, **kwargs):
    return _RestrictedUnpickler(file, **kwargs).load()


# what torch.load needs of a pickle module: its Unpickler (zip checkpoints) and load (legacy checkpoints)
_PICKLE = types.SimpleNamespace(__name__="yolo_prune_restricted_pickle", Unpickler=_RestrictedUnpickler,
                                load=_restricted_load)  # fmt: skip


def read_foreign(path) -> dict:
    """The checkpoint dict with stand-ins for the model objects (no foreign code imported or run)."""
    try:
        ckpt = torch.load(str(path), map_location="cpu", pickle_module=_PICKLE, weights_only=False)
    except YoloPruneError:
        raise
    except Exception as e:  # truncated or not a torch file
        raise YoloPruneError(f"Cannot read '{path}' as a torch checkpoint: {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict):
        raise YoloPruneError(f"'{path}' is not a YOLOv5/YOLOv7 checkpoint (a dict with a 'model').")
    return ckpt


def is_foreign(path) -> bool:
    """True if `path` is a torch zip checkpoint that pickles classes of the YOLOv5/YOLOv7 repositories."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip checkpoint: the ordinary loader reports what it is
        return False
    return any(n.split(".")[0] == "models" for n in names)


# -- rebuild ----------------------------------------------------------------------------------------------------------
def load_foreign(path) -> nn.Module:
    """An official YOLOv5/YOLOv7 checkpoint as a float32 `AnchorDetectionModel` in eval mode."""
    ckpt = read_foreign(path)
    root = ckpt.get("ema") if ckpt.get("ema") is not None else ckpt.get("model")  # EMA first, as YOLOv5 loads
    if _foreign_name(root) not in _MODEL_CLASSES:
        raise YoloPruneError(f"'{path}' holds no YOLOv5/YOLOv7 model (models.yolo.Model) under 'ema' or 'model'.")
    cfg = root.__dict__.get("yaml")
    if not isinstance(cfg, dict) or not is_anchor_yaml(cfg):
        raise YoloPruneError(f"'{path}' has no YOLOv5/YOLOv7 model yaml with anchors and a Detect/IDetect head.")
    try:
        model = AnchorDetectionModel(deepcopy(cfg), ch=cfg.get("ch", 3), verbose=False)
        _copy_weights(root, model, path)
        _copy_settings(root, model)
    except YoloPruneError:
        raise
    except (AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError) as e:  # malformed yaml/state
        raise YoloPruneError(f"Cannot rebuild the model of '{path}' from its yaml: {type(e).__name__}: {e}") from None
    _check_strides(root, model, path)
    names = root.__dict__.get("names")
    if names is not None:
        model.names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
    model.args = {"task": "detect", "imgsz": 640}
    model.task = "detect"
    model.pt_path = str(path)
    return model.float().eval()


def _stub_state(stub: _Stub, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict the original module would have: persistent parameters and buffers, by qualified name."""
    d, out = stub.__dict__, {}
    skip = d.get("_non_persistent_buffers_set", set())
    for group in ("_parameters", "_buffers"):
        for k, v in (d.get(group) or {}).items():
            if v is not None and k not in skip:
                out[prefix + k] = v
    for k, child in _children(stub):
        out.update(_stub_state(child, f"{prefix}{k}."))
    return out


def _children(stub: _Stub):
    return [(k, m) for k, m in (stub.__dict__.get("_modules") or {}).items() if isinstance(m, _Stub)]


def _stub_modules(stub: _Stub, prefix: str = ""):
    for k, child in _children(stub):
        name = f"{prefix}{k}"
        yield name, child
        yield from _stub_modules(child, name + ".")


def _our_name(name: str) -> str:
    name = f".{name}."
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return name[1:-1]


def _copy_weights(root: _Stub, model: nn.Module, path):
    theirs = {_our_name(k): v for k, v in _stub_state(root).items() if not k.endswith("anchor_grid")}
    ours = model.state_dict()
    problems = sorted(set(ours) ^ set(theirs)) + [k for k in ours if k in theirs and ours[k].shape != theirs[k].shape]
    if problems:
        deployed = any("rbr_reparam" in k for k in problems)
        hint = " (a fused/deploy RepConv: import the training checkpoint)" if deployed else ""
        raise YoloPruneError(
            f"The weights in '{path}' do not fit the model its yaml describes{hint}: {len(problems)} mismatched "
            f"tensors, e.g. {', '.join(problems[:4])}."
        )
    model.load_state_dict({k: theirs[k].to(v.dtype) for k, v in ours.items()})


def _copy_settings(root: _Stub, model: nn.Module):
    """BatchNorm eps/momentum and activations as trained (the yaml does not always say, e.g. YOLOv5's defaults)."""
    for name, stub in _stub_modules(root):
        name_of_class = _foreign_name(stub)
        kind = name_of_class.rpartition(".")[2]
        if kind == "BatchNorm2d":
            bn = model.get_submodule(_our_name(name))
            bn.eps, bn.momentum = stub.__dict__["eps"], stub.__dict__["momentum"]
        elif name_of_class.startswith("torch.nn.") and _is_activation(kind):
            act = _activation_from(stub, kind)
            parent, _, attr = _our_name(name).rpartition(".")
            current = model.get_submodule(_our_name(name))
            if _act_key(current) != _act_key(act):
                setattr(model.get_submodule(parent), attr, act)


def _is_activation(kind: str) -> bool:
    cls = getattr(nn, kind, None)
    return kind == "Identity" or (isinstance(cls, type) and cls.__module__ == "torch.nn.modules.activation")


def _activation_from(stub: _Stub, kind: str) -> nn.Module:
    cls = getattr(nn, kind)
    params = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in stub.__dict__.items() if k in params and isinstance(v, (bool, int, float))}
    return cls(**kwargs)


def _act_key(m: nn.Module):
    settings = {k: v for k, v in vars(m).items() if isinstance(v, (int, float)) and not k.startswith("_")}
    return type(m).__name__, {k: v for k, v in settings.items() if k not in ("inplace", "training")}


def _check_strides(root: _Stub, model: nn.Module, path):
    stride = root.__dict__.get("stride")
    if stride is not None and not torch.equal(stride.float().flatten(), model.stride.float()):
        raise YoloPruneError(
            f"'{path}' says its strides are {stride.tolist()}, the rebuilt model has {model.stride.tolist()}."
        )


# -- output -----------------------------------------------------------------------------------------------------------
def import_checkpoint(src: Path, out: Path) -> Path:
    """Convert an official YOLOv5/YOLOv7 checkpoint into an Ultralytics-layout checkpoint (`YOLO(out)` loads it)."""

    src, out = Path(src), Path(out)
    if not src.is_file():
        raise YoloPruneError(f"Checkpoint '{src}' does not exist.")
    if out.suffix != ".pt":
        raise YoloPruneError(f"Output '{out}' must be a .pt file.")
    model = load_foreign(src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    provenance = {"file": src.name, "sha256": digest, "by": "yolo-prune import"}
    # FP16 as Ultralytics stores models (the official checkpoints are FP16 too, so nothing is lost)
    return save_checkpoint(model, out, provenance, train_args=dict(model.args, model=src.name), half=True,
                           key="imported_from")  # fmt: skip


