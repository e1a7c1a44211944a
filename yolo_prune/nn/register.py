"""Make yolo-prune's extra modules known to Ultralytics' YAML parser, without editing the installed package.

`parse_model` resolves module names through the globals of `ultralytics.nn.tasks`; registering a class there is the
supported extension point short of forking. Idempotent: safe to call from every entry point and in DDP children.
"""

_EXTRA_MODULES: dict[str, type] = {}


def add_module(cls: type):
    """Class decorator: register `cls` under its own name for YAML configs."""
    _EXTRA_MODULES[cls.__name__] = cls
    return cls


def register_modules():
    import ultralytics.nn.tasks as tasks

    from . import modules  # noqa: F401  (defines and registers our classes)

    for name, cls in _EXTRA_MODULES.items():
        if getattr(tasks, name, None) is not cls:
            setattr(tasks, name, cls)
