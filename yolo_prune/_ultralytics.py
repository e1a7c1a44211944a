"""How yolo-prune plugs into Ultralytics: one explicit, idempotent `install()`, run by `import yolo_prune`.

Every way in imports the package first, so every way installs: the Python API, the CLI, a DDP child (it imports the
trainer's module) and the unpickling of a checkpoint that holds one of our classes (pickle imports its module). After
it, `YOLO("yolov7.yaml")`, `YOLO("yolov7-tiny-idetect.yaml")` and `yolo train model=...` through `yolo-prune yolo`
work as with any Ultralytics model.

Ultralytics has no plugin registry for model layers, config names or model classes, so each step extends one
documented-by-code behaviour of the supported release line, and tests/nn/test_ultralytics_hooks.py pins each one:
1. layer classes: `parse_model` resolves a row's module name with `globals()[name]` in `ultralytics.nn.tasks`, so our
   classes are set there (and allowed in torch's weights-only loads, `ULTRALYTICS_SAFE_LOAD=1`);
2. explicit-channel rows (nn/explicit.py): `tasks.parse_model` is wrapped, the stock parser cannot learn a module's
   output width;
3. our configs by name: `check_yaml` -> `checks.check_file` only searches the ultralytics package, so `check_file` is
   wrapped to answer our config names (a file of that name in the working directory still wins);
4. anchor YAMLs: `YOLO(...)` and `DetectionTrainer.get_model` both call `DetectionModel(cfg)`, which cannot build an
   anchor head; `DetectionModel.__new__` hands exactly the configs with `anchors:` and a Detect/IDetect head to
   `AnchorDetectionModel`. Every config stock Ultralytics builds is still built by stock code.

Nothing here touches Ultralytics' settings file: offline behaviour is the user's (`YOLO_OFFLINE=1` in the environment).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from .errors import YoloPruneError

SUPPORTED_ULTRALYTICS = ">=8.4.190,<8.5"  # the release line whose internals (above) the tests pin
_OLDEST, _FIRST_UNSUPPORTED = (8, 4, 190), (8, 5)


class UnsupportedUltralytics(YoloPruneError, ImportError):
    """The installed Ultralytics is outside the release line yolo-prune extends."""


def check_version(version: str) -> None:
    """Raise `UnsupportedUltralytics` unless `version` is within SUPPORTED_ULTRALYTICS."""
    match = re.match(r"\d+(\.\d+)*", version)
    release = tuple(int(x) for x in match.group().split(".")) if match else ()
    if not _OLDEST <= release < _FIRST_UNSUPPORTED:
        raise UnsupportedUltralytics(
            f"yolo-prune needs ultralytics{SUPPORTED_ULTRALYTICS} (it extends that release line's model parser and "
            f"trainer), but ultralytics {version} is installed; run: pip install 'ultralytics{SUPPORTED_ULTRALYTICS}'"
        )


def install() -> None:
    """Make our layers, configs and anchor models known to Ultralytics (idempotent; see the module docstring).

    Our nn modules are imported only after the version check (in the steps below): they import Ultralytics internals,
    which another release may not have, and that must not hide the one clear message.
    """
    import ultralytics

    check_version(ultralytics.__version__)
    _register_layers()
    _wrap_parse_model()
    _wrap_check_file()
    _route_anchor_configs()


def _layers() -> dict[str, type]:
    from .nn.anchor import AnchorDetect, IDetect, ImplicitA, ImplicitM
    from .nn.modules import SPPCSPC

    return {cls.__name__: cls for cls in (SPPCSPC, ImplicitA, ImplicitM, AnchorDetect, IDetect)}


def _register_layers() -> None:
    import torch
    import ultralytics.nn.tasks as tasks

    for name, cls in _layers().items():
        present = vars(tasks).get(name)
        if present is not None and present is not cls:
            raise UnsupportedUltralytics(f"This Ultralytics defines its own '{name}', which yolo-prune would shadow; "
                                         f"use ultralytics{SUPPORTED_ULTRALYTICS}.")  # fmt: skip
        setattr(tasks, name, cls)
    from .nn.anchor import AnchorDetectionModel

    # torch's allow-list is process-wide and Ultralytics' restricted loads only add their own classes to it
    torch.serialization.add_safe_globals([*_layers().values(), AnchorDetectionModel])


def _wrap_parse_model() -> None:
    import ultralytics.nn.tasks as tasks

    from .nn.explicit import with_explicit_channels

    if not getattr(tasks.parse_model, "yolo_prune_explicit_channels", False):
        tasks.parse_model = with_explicit_channels(tasks.parse_model)


def _wrap_check_file() -> None:
    from ultralytics.utils import checks

    if getattr(checks.check_file, "yolo_prune_configs", False):
        return
    stock = checks.check_file

    @functools.wraps(stock)
    def check_file(file, *args, **kwargs):
        from .nn.cfg import config_path

        ours = config_path(file) if isinstance(file, str) and not os.path.exists(file) else None
        return str(ours) if ours else stock(file, *args, **kwargs)

    check_file.yolo_prune_configs = True
    checks.check_file = check_file


def _route_anchor_configs() -> None:
    from ultralytics.nn.tasks import DetectionModel

    if "__new__" not in vars(DetectionModel):
        DetectionModel.__new__ = staticmethod(_detection_model_new)


def _detection_model_new(cls, *args, **kwargs):
    """`DetectionModel(cfg, ...)` of an anchor config is an AnchorDetectionModel (same constructor arguments)."""
    from ultralytics.nn.tasks import DetectionModel

    cfg = args[0] if args else kwargs.get("cfg")  # unpickling and deepcopy call __new__(cls) alone
    if cls is DetectionModel and cfg is not None and _is_anchor_config(cfg):
        from .nn.anchor import AnchorDetectionModel

        cls = AnchorDetectionModel
    return super(DetectionModel, cls).__new__(cls)


def _is_anchor_config(cfg) -> bool:
    from ultralytics.utils import YAML

    from .nn.cfg import config_path, is_anchor_yaml

    if isinstance(cfg, dict):
        return is_anchor_yaml(cfg)
    path = config_path(str(cfg)) or Path(str(cfg))
    if path.suffix not in (".yaml", ".yml") or not path.is_file():  # Ultralytics' own configs have no anchors
        return False
    try:
        return is_anchor_yaml(YAML.load(path))
    except Exception:  # unreadable: DetectionModel reports it the way it always has
        return False
