"""Load checkpoints without running code from them: a restricted unpickler for every file a user hands us.

A pickle can name any importable global and call it while it loads (`os.system` in an extra key is enough). Here each
global the file names must be a torch, Ultralytics or yolo-prune model class, tensor/container data or one of a few
plain-data constructors; anything else is refused with a `YoloPruneError` naming it, before anything from the file
is called. Model classes are only ever rebuilt from their saved state (never called), so their constructors (which
parse YAMLs) cannot be reached either. `YOLO_PRUNE_TRUST_CHECKPOINT=1` (CLI: `--trust-checkpoint`) loads trusted
files with the ordinary unpickler. See docs/security.md.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import contextlib
import functools
import os
import pathlib
import pickle
import sys
import types
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import YoloPruneError

TRUST_ENV = "YOLO_PRUNE_TRUST_CHECKPOINT"
OPT_IN = f"To load a file you trust anyway, pass --trust-checkpoint (or set {TRUST_ENV}=1)."
# packages whose nn.Module classes a checkpoint may hold; criterion modules may add plain classes
_MODULE_PACKAGES = ("torch.nn.modules", "ultralytics.nn", "yolo_prune.nn")
_CLASS_MODULES = ("ultralytics.utils.loss", "ultralytics.utils.tal", "yolo_prune.nn.anchor")
_FORWARDS = ("forward", "forward_fuse", "forward_split")  # methods fused modules keep as attributes


def trusted() -> bool:
    """True when the user opted in to loading checkpoints with the ordinary (code-running) unpickler."""
    return os.environ.get(TRUST_ENV, "").lower() in ("1", "true", "yes")


def _latin1(text, encoding="latin1"):
    """`_codecs.encode` as protocol-2 pickles use it for bytes, and nothing else."""
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"calls _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, encoding)


def _getattr(obj, name):
    """`getattr` as pickles of fused or bound forward methods use it, and nothing else."""
    owner = obj if isinstance(obj, type) else type(obj)
    if name in _FORWARDS and issubclass(owner, nn.Module):
        return getattr(obj, name)
    raise _Refused(f"calls getattr({owner.__name__}, {name!r})")


def _tensor(storage, offset, size, stride, requires_grad=False, _hooks=None, metadata=None):
    """torch's tensor rebuilder without backward hooks (a checkpoint never needs callables on its tensors)."""
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict(), metadata)


def _parameter(data, requires_grad=True, _hooks=None, state=None):
    if state:
        return torch._utils._rebuild_parameter_with_state(data, requires_grad, OrderedDict(), state)
    return torch._utils._rebuild_parameter(data, requires_grad, OrderedDict())


def _numpy_callables() -> dict:
    scalar = np.float64(0).__reduce__()[0]  # numpy.core.multiarray.scalar (numpy._core in numpy 2)
    reconstruct = np.zeros(0).__reduce__()[0]
    return {f"{core}.multiarray.{f}": fn for core in ("numpy.core", "numpy._core")
            for f, fn in (("scalar", scalar), ("_reconstruct", reconstruct))}  # fmt: skip


_PATH = type(pathlib.Path())  # either OS's pickled path becomes this one's (as Ultralytics maps them)
# the only globals a checkpoint may call while loading: tensor and container rebuilders, plain-data constructors
_CALLABLES = {
    "collections.OrderedDict": OrderedDict, "collections.Counter": Counter, "builtins.set": set,
    "builtins.frozenset": frozenset, "builtins.bytearray": bytearray, "builtins.complex": complex,
    "builtins.slice": slice, "builtins.getattr": _getattr, "_codecs.encode": _latin1,
    "torch._utils._rebuild_tensor_v2": _tensor, "torch._utils._rebuild_parameter": _parameter,
    "torch._utils._rebuild_parameter_with_state": _parameter, "torch.Size": torch.Size, "torch.device": torch.device,
    "numpy.dtype": np.dtype, **{f"{m}.{c}": _PATH for m in ("pathlib", "pathlib._local")
                                for c in ("PosixPath", "WindowsPath")},
    **_numpy_callables(),
}  # fmt: skip
_DATA_TYPES = {"numpy.ndarray": np.ndarray}  # arguments of numpy's rebuilder, never called
_NAMESPACES = ("ultralytics.utils.IterableSimpleNamespace", "ultralytics.yolo.utils.IterableSimpleNamespace")


def refusal(path, what: str) -> YoloPruneError:
    return YoloPruneError(f"Refused to load '{path}': its pickle {what}, which no torch/Ultralytics/yolo-prune "
                          f"checkpoint needs; nothing from the file was run. {OPT_IN}")  # fmt: skip


class _Refused(pickle.UnpicklingError):
    """A global the policy refuses; carries its name up to `load`, which names the file."""


def python3_name(module: str, name: str) -> tuple[str, str]:
    """A global as Python 3 names it (protocol-2 pickles use Python 2 names such as `__builtin__.set`)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def resolve(module: str, name: str):
    """The object a pickled global may become under the policy, else `_Refused`."""
    module, name = python3_name(module, name)
    full = f"{module}.{name}"
    if full in _CALLABLES:
        return _CALLABLES[full]
    if full in _DATA_TYPES:
        return _DATA_TYPES[full]
    if full in _NAMESPACES:
        from ultralytics.utils import IterableSimpleNamespace

        return IterableSimpleNamespace
    if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
        return getattr(torch, name)
    cls = _class(module, name)
    if cls is None:
        raise _Refused(f"references {full}")
    return cls


def _class(module: str, name: str) -> type | None:
    """A model class (or criterion helper class) defined in `module`, one of our trusted packages.

    Only modules already imported are looked in: a file never makes us import anything (a `__main__` would run).
    """
    packages = _MODULE_PACKAGES + _CLASS_MODULES
    if "." in name or not any(module == p or module.startswith(p + ".") for p in packages):
        return None
    obj = getattr(sys.modules.get(module), name, None)
    # a package re-exporting its submodule's class names it too: checkpoints saved before nn/anchor.py became the
    # package nn/anchor/ name `yolo_prune.nn.anchor.AnchorDetect`
    if not isinstance(obj, type) or not (obj.__module__ == module or obj.__module__.startswith(module + ".")):
        return None
    owner = obj.__module__
    ours = any(owner == m or owner.startswith(m + ".") for m in _CLASS_MODULES)
    return obj if issubclass(obj, nn.Module) or ours else None


class _Unpickler(pickle._Unpickler):
    """The pure-Python unpickler with the global policy, and REDUCE restricted to the plain-data callables.

    Classes only come back through NEWOBJ (`cls.__new__`) and BUILD (their saved state), as torch.save writes them;
    a pickle that *calls* a class (REDUCE, INST, OBJ) would run its constructor, so it is refused.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        return resolve(module, name)

    def _reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if id(func) not in _callable_ids():
            raise _Refused(f"calls {getattr(func, '__qualname__', func)} (classes are only rebuilt from saved state)")
        self.stack[-1] = func(*args)

    def _refuse_call(self):
        raise _Refused("calls a class with the INST/OBJ opcodes")

    dispatch[pickle.REDUCE[0]] = _reduce
    dispatch[pickle.INST[0]] = _refuse_call
    dispatch[pickle.OBJ[0]] = _refuse_call


@functools.lru_cache(maxsize=1)
def _callable_ids() -> frozenset:
    from ultralytics.utils import IterableSimpleNamespace  # a SimpleNamespace: pickled as a call with no arguments

    return frozenset(map(id, (*_CALLABLES.values(), IterableSimpleNamespace)))


def _import_model_modules():
    """Import every module whose classes a checkpoint may name (the policy looks only in imported modules).

    Ours are imported by `import yolo_prune` (its `install()`), which ran before this module could be imported.
    """
    import ultralytics.nn.tasks  # noqa: F401  (imports ultralytics.nn.modules)
    import ultralytics.utils.loss  # noqa: F401
    import ultralytics.utils.tal  # noqa: F401


def _load(file, **kwargs):
    return _Unpickler(file, **kwargs).load()


# what torch.load needs of a pickle module: Unpickler (zip checkpoints) and load (legacy checkpoints)
_PICKLE = types.SimpleNamespace(__name__="yolo_prune_safe_pickle", Unpickler=_Unpickler, load=_load)


def load(path):
    """The unpickled contents of the torch file `path` (on the CPU), or one `YoloPruneError` saying why not."""
    file = Path(path)
    if not file.is_file():
        raise YoloPruneError(f"Checkpoint '{path}' does not exist" + (" (it is a folder)." if file.is_dir() else "."))
    _import_model_modules()
    try:
        if trusted():
            return torch.load(file, map_location="cpu", weights_only=False)
        return torch.load(file, map_location="cpu", pickle_module=_PICKLE, weights_only=False)
    except _Refused as e:
        raise refusal(path, e.args[0]) from None
    except Exception as e:  # empty, truncated, text or another format: torch/pickle raise many types
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise YoloPruneError(f"Cannot read '{path}' as a torch checkpoint: the file is empty, truncated or not a .pt "
                             f"file ({type(e).__name__}: {detail}).") from None  # fmt: skip


def load_checkpoint(path) -> tuple[nn.Module, dict]:
    """(float32 model in eval mode, checkpoint dict) of an Ultralytics-layout checkpoint, EMA preferred."""
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import guess_model_task

    ckpt = load(path)
    if not isinstance(ckpt, dict):
        raise YoloPruneError(f"'{path}' is not an Ultralytics checkpoint (a dict with a 'model'), it holds a "
                             f"{type(ckpt).__name__}.")  # fmt: skip
    model = ckpt.get("ema") if ckpt.get("ema") is not None else ckpt.get("model")
    if not isinstance(model, nn.Module):
        raise YoloPruneError(f"'{path}' holds no model under 'ema' or 'model'; give an Ultralytics .pt checkpoint.")
    if isinstance(getattr(model, "yaml", None), dict):  # Ultralytics rebuilds (and evals) it when it retrains a model
        from .nn.cfg import check_model_yaml

        check_model_yaml(model.yaml, str(path))
    model = model.float()
    model.args = {**DEFAULT_CFG_DICT, **(ckpt.get("train_args") or {})}
    model.pt_path = str(path)
    if not hasattr(model, "task"):
        model.task = guess_model_task(model)
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    return model.eval(), ckpt


@contextlib.contextmanager
def ultralytics_loads(*paths):
    """Run Ultralytics' own loads of `paths` (files this loader accepted) as torch weights-only loads.

    Inside, torch.load is forced to `weights_only=True` (TORCH_FORCE_WEIGHTS_ONLY_LOAD, a public torch switch) and
    allowed exactly the globals our policy accepts in those files, so a load Ultralytics makes itself (resume,
    final validation) is restricted too.
    """
    if trusted():
        yield
        return
    _import_model_modules()
    allowed = []
    for p in paths:
        for full in _globals_in(p):
            module, _, name = full.rpartition(".")
            try:
                allowed.append((resolve(module, name), full))
            except _Refused as e:
                raise refusal(p, e.args[0]) from None
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(allowed):
            yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def _globals_in(path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # missing, or not a zip checkpoint: torch.load reports it
        return []
