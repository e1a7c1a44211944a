"""yolo-prune: filter pruning for Ultralytics YOLO detectors (train-while-pruning, exact slimming, deployment).

The API functions (`prune`, `train`, `info`, `val`, `export`, `bench`, `import_checkpoint`) are loaded on first use,
so `import yolo_prune` stays cheap and does no I/O.
"""

from importlib import metadata

try:
    __version__ = metadata.version("yolo-prune")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

_API = {"prune", "train", "info", "val", "export", "bench", "import_checkpoint"}


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    if name in {"list_methods", "register_method", "PruningMethod"}:
        from . import methods

        return getattr(methods, name)
    raise AttributeError(f"module 'yolo_prune' has no attribute '{name}'")


__all__ = sorted(_API | {"list_methods", "register_method", "PruningMethod", "__version__"})
