"""yolo-prune: filter pruning for Ultralytics YOLO detectors (train-while-pruning, exact slimming, deployment).

`import yolo_prune` installs our models into Ultralytics (`_ultralytics.install`: after it `YOLO("yolov7.yaml")`
works) and checks the Ultralytics version. The API functions (`prune`, `train`, `info`, `val`, `export`, `bench`,
`import_checkpoint`) and `prune_trainer` / `PruneTrainer` (for `YOLO(...).train(trainer=...)`) load on first use.
"""

import types
from importlib import metadata

from . import train as _train_package
from ._ultralytics import install

try:
    __version__ = metadata.version("yolo-prune")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

install()

_API = {"prune", "info", "val", "export", "bench", "import_checkpoint"}
_TRAINING = {"prune_trainer": "bind", "PruneTrainer": "trainer"}


class _TrainPackage(types.ModuleType):
    """`yolo_prune.train` is the training subpackage, and calling it is the API's `train()`.

    A plain `train` function here would be replaced by the subpackage as soon as anything imports
    `yolo_prune.train.<module>` (Python binds a subpackage as an attribute of its parent).
    """

    def __call__(self, *args, **kwargs):
        from .api import train

        return train(*args, **kwargs)


_train_package.__class__ = _TrainPackage


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    if name in _TRAINING:
        from importlib import import_module

        return getattr(import_module(f".train.{_TRAINING[name]}", __name__), name)
    if name in {"list_methods", "register_method", "PruningMethod"}:
        from . import methods

        return getattr(methods, name)
    raise AttributeError(f"module 'yolo_prune' has no attribute '{name}'")


__all__ = sorted(_API | set(_TRAINING) | {"train", "install", "list_methods", "register_method", "PruningMethod",
                                          "__version__"})  # fmt: skip
