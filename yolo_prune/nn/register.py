"""Make yolo-prune's extra modules known to Ultralytics' YAML parser, without editing the installed package.

`parse_model` resolves module names through the globals of `ultralytics.nn.tasks`; registering a class there is the
supported extension point short of forking. Idempotent: safe to call from every entry point and in DDP children.
"""

from torch import nn

_EXTRA_MODULES: dict[str, type] = {}


def add_module(cls: type):
    """Class decorator: register `cls` under its own name for YAML configs."""
    _EXTRA_MODULES[cls.__name__] = cls
    return cls


def register_modules():
    import ultralytics.nn.tasks as tasks

    from . import anchor, modules  # noqa: F401  (define and register our classes)

    for name, cls in _EXTRA_MODULES.items():
        if getattr(tasks, name, None) is not cls:
            setattr(tasks, name, cls)
    _allow_in_weights_only_loads(anchor, modules)


def _allow_in_weights_only_loads(*files):
    """Let torch's weights-only unpickler (Ultralytics' `ULTRALYTICS_SAFE_LOAD=1`) rebuild our model classes.

    torch's public allow-list is process-wide; Ultralytics only adds its own classes to it.
    """
    from ..safe_load import register_safe_globals

    register_safe_globals(v for f in files for v in vars(f).values()
                          if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == f.__name__)  # fmt: skip
