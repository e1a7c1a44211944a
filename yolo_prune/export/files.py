"""Atomic file writes: an output either appears complete or not at all (never half-written)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` through a temp file in the same folder and one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def publish(tmp, path):
    """Rename a finished temp file onto `path`, with the permissions a plain `open(path, "w")` would have given."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp files are private (0600)
    os.replace(tmp, path)


def write_json(path, obj) -> Path:
    """Atomically write `obj` as indented JSON."""
    return write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def temp_path_for(path) -> Path:
    """A fresh empty temp file beside `path`, same suffix, for writers that want a file name; rename it when done."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    return Path(tmp)
