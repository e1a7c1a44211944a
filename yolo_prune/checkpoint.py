"""Write slim models in the Ultralytics checkpoint layout, atomically."""

from __future__ import annotations

import copy
import os
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import YoloPruneError

_NUMPY = "__numpy__"  # marks a packed numpy value (see pack_numpy)
STATE_ATTR = "yolo_prune_state"  # attribute of the pickled EMA module in last.pt: PruneTrainer's state, packed


def check_output_path(out) -> Path:
    """Validate an output checkpoint path before any work is done (so a bad path fails fast, with nothing written)."""
    path = Path(out)
    if path.suffix != ".pt":
        raise YoloPruneError(f"Output '{out}' must be a .pt file (an Ultralytics checkpoint).")
    return check_writable(path)


def check_writable(out) -> Path:
    """Fail now, with nothing written, if `out` cannot be created: probe the nearest existing folder with a temp file.

    A real write is the only test that holds for root, read-only mounts and special filesystems alike.
    """
    path = Path(out)
    if path.is_dir():
        raise YoloPruneError(f"Output '{out}' is a folder; give a file name.")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise YoloPruneError(f"Output '{out}' cannot be written: '{folder}' is a file, not a folder.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".yolo_prune_probe_", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise YoloPruneError(f"Output '{out}' cannot be written ({e.strerror} in '{folder}'); choose a folder you "
                             "can write to.") from None  # fmt: skip
    return path


def atomic_save(obj, path) -> Path:
    """torch.save to a temp file in the same folder, then one rename: a kill at any moment leaves the old file whole."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def pack_numpy(obj):
    """`obj` with every numpy array or scalar stored as raw bytes in a tensor, so that weights-only unpicklers
    (ours, torch's, `ULTRALYTICS_SAFE_LOAD=1`) load it; `unpack_numpy` restores them bit for bit."""
    if isinstance(obj, (np.ndarray, np.generic)):
        arr = np.array(obj, order="C")
        return {_NUMPY: torch.from_numpy(arr.reshape(-1).view(np.uint8).copy()), "dtype": arr.dtype.str,
                "shape": list(arr.shape), "scalar": isinstance(obj, np.generic)}  # fmt: skip
    if isinstance(obj, dict):
        return {k: pack_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(pack_numpy(v) for v in obj)
    return obj


def unpack_numpy(obj):
    if isinstance(obj, dict) and _NUMPY in obj:
        arr = np.frombuffer(obj[_NUMPY].numpy().tobytes(), dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
        return arr[()] if obj["scalar"] else arr
    if isinstance(obj, dict):
        return {k: unpack_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(unpack_numpy(v) for v in obj)
    return obj


def is_one_shot_prune(ckpt: dict | None) -> bool:
    """Whether a checkpoint was written by `yolo-prune prune` (api.prune's manifest names the model it pruned; a
    training run's manifest carries its settings instead): its BatchNorm statistics are still the dense model's."""
    manifest = (ckpt or {}).get("yolo_prune")
    return isinstance(manifest, dict) and "source" in manifest and "settings" not in manifest


def save_checkpoint(model: nn.Module, out, manifest: dict, train_args: dict | None = None, half: bool = False,
                    key: str = "yolo_prune") -> Path:  # fmt: skip
    """Save `model` so that `YOLO(out)`, `yolo predict/val/export` and further training load it as is.

    Pruned models are stored in float32 by default (Ultralytics stores FP16; pruned BN statistics are worth the exact
    copy); `half=True` for models that were FP16 already. `manifest` goes under the extra key `key`.
    """
    from ultralytics import __version__

    path = check_output_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).eval()
    model = model.half() if half else model.float()
    for p in model.parameters():
        p.requires_grad_(False)
    ckpt = {
        "date": datetime.now().astimezone().isoformat(),
        "version": __version__,
        "license": "AGPL-3.0 (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "epoch": -1,
        "best_fitness": None,
        "model": model,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": train_args or {},
        "train_metrics": None,
        "train_results": None,
        key: manifest,
    }
    return atomic_save(ckpt, path)
