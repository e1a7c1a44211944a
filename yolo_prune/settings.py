"""Every pruning setting in one place: `PruneSettings` and the per-method option dataclasses.

A setting is a dataclass field with a default and a help text (`setting(...)`). The command line flags
(`--round-to`) and the Python API keywords (`round_to=`) are generated from the fields (`add_flags`, `split_keywords`),
values are checked once (`Options.validate`), and the whole dataclass is saved with the run (last.pt, the slim
checkpoint's manifest) and restored on resume. Adding a field is enough to get its flag and keyword.

Cheap to import (no torch): the CLI builds its parser from here.
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields

from .errors import YoloPruneError


def setting(default, help: str, *, choices=None):
    """A dataclass field with its help text; `choices`: a list, or a callable giving one when the parser is built."""
    return field(default=default, metadata={"help": help, "choices": choices})


class Options:
    """Base of the settings dataclasses: typed, validated fields that become flags and keywords."""

    def validate(self):
        """Check every field's type (one clear error), then the subclass's own rules (override `check`)."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            setattr(self, f.name, _checked(f.name, getattr(self, f.name), hints[f.name]))
        self.check()
        return self

    def check(self) -> None:
        """Rules beyond the types; raise YoloPruneError naming the flag (`flag_name`)."""

    def to_dict(self) -> dict:
        return asdict(self)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _checked(name: str, value, hint):
    """`value` as the field's type (an int is a valid float), or one error naming the flag."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None and optional:
        return None
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base in (int, str, bool, dict) and isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    if base not in (int, float, str, bool, dict):
        return value
    kind = {int: "a whole number", float: "a number", str: "a string", bool: "true or false", dict: "a dict"}[base]
    raise YoloPruneError(f"{flag_name(name)} must be {kind}{' or None' if optional else ''}, got {value!r}.")


def flag_fields(cls, only=None) -> list:
    return [f for f in fields(cls) if f.metadata.get("flag", True) and (only is None or f.name in only)]


def add_flags(parser, cls, rename: dict[str, str] | None = None, title: str | None = None, only=None) -> None:
    """One flag per field of the dataclass `cls`; default None means "not given" (the dataclass default applies).

    `rename` maps a field name to its public name where the command already uses the field's name for something
    else (`train --imgsz` is Ultralytics' training size, so PruneSettings.imgsz is `--flops-imgsz` there).
    """
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    for f in flag_fields(cls, only):
        name = (rename or {}).get(f.name, f.name)
        default = f.default if f.default is not MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        choices = f.metadata.get("choices")
        choices = choices() if callable(choices) else choices
        args = typing.get_args(hints[f.name])
        base = next((a for a in args if a is not type(None)), hints[f.name]) if args else hints[f.name]
        if base is bool:
            group.add_argument(flag_name(name), dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)  # fmt: skip
        else:
            group.add_argument(flag_name(name), dest=name, type=base, default=None, choices=choices, help=help_text)


def given_flags(namespace, cls, rename: dict[str, str] | None = None, only=None) -> dict:
    """The fields of `cls` given on the command line, by field name."""
    out = {}
    for f in flag_fields(cls, only):
        value = getattr(namespace, (rename or {}).get(f.name, f.name), None)
        if value is not None:
            out[f.name] = value
    return out


@dataclass
class PruneSettings(Options):
    """Everything that defines a pruning run; validated once, saved in last.pt, passed to DDP children as JSON."""

    flops: float = setting(0.0, "fraction of FLOPs to remove, e.g. 0.37 (0 = train without pruning)")
    method: str = setting("effp", "pruning method", choices=lambda: _methods(in_training=True))
    imgsz: int = setting(640, "image size at which FLOPs are counted (the papers' and Ultralytics' convention)")
    round_to: int = setting(8, "kept widths are multiples of this (TensorRT FP16 likes 8; 16/32 for INT8 or DLA)")
    min_keep: float = setting(0.25, "floor: never keep less than this fraction of a channel group")
    warmup_frac: float = setting(0.1, "share of the run trained dense before the first pruning step")
    prune_frac: float = setting(0.6, "share of the run at which the FLOPs target is reached; fixed masks afterwards")
    steps_per_epoch: int = setting(4, "pruning steps per epoch during the pruning phase")
    compensate: bool | None = setting(
        None,
        "hand masked channels over to their consumers by least squares (train/compensate.py); default: on when "
        "training starts from weights (learned channel correlations to use), off from scratch (measured worse)",
    )
    distill: float | None = setting(
        None,
        "weight of feature distillation from the dense starting model (train/distill.py); default: 1 with "
        "--weights, else 0 (off)",
    )
    # the chosen method's options (its Options dataclass as a dict, every field filled in by validate)
    options: dict = field(default_factory=dict, metadata={"flag": False})

    def check(self) -> None:
        if not 0 <= self.flops < 1:
            raise YoloPruneError(f"--flops must be a fraction in [0, 1) (e.g. 0.37), got {self.flops}.")
        if not 0 <= self.warmup_frac < self.prune_frac <= 1:
            raise YoloPruneError(
                f"Need 0 <= --warmup-frac < --prune-frac <= 1, got {self.warmup_frac} and {self.prune_frac}."
            )
        if self.steps_per_epoch < 1:
            raise YoloPruneError(f"--steps-per-epoch must be at least 1, got {self.steps_per_epoch}.")
        if self.distill is not None and not self.distill >= 0:
            raise YoloPruneError(f"--distill must be a weight >= 0 (0 switches distillation off), got {self.distill}.")
        if self.round_to < 1:
            raise YoloPruneError(f"--round-to must be a positive integer, got {self.round_to}.")
        if not 0 <= self.min_keep <= 1:
            raise YoloPruneError(f"--min-keep must be within [0, 1], got {self.min_keep}.")

    def validate(self, one_shot: bool = False) -> PruneSettings:
        """Types and ranges, the method (one usable in training, or one-shot), and the method's options."""
        super().validate()
        from .methods.base import build_options, get_method

        cls = get_method(self.method)
        if self.flops and one_shot and not cls.one_shot:
            raise YoloPruneError(f"Method '{self.method}' prunes during training; use `yolo-prune train --method "
                                 f"{self.method}`.")  # fmt: skip
        if self.flops and not one_shot and not cls.in_training:
            raise YoloPruneError(f"Method '{self.method}' prunes a trained model at once; use `yolo-prune prune "
                                 f"--method {self.method}`, or one of {_methods(in_training=True)} here.")  # fmt: skip
        self.options = build_options(self.method, self.options).to_dict()
        return self


def _methods(in_training: bool) -> list[str]:
    from .methods import list_methods

    return list_methods(one_shot=None if in_training is None else not in_training)


TRAIN_RENAME = {"imgsz": "flops_imgsz"}  # `train --imgsz` / `imgsz=` is Ultralytics' training image size


def split_keywords(kwargs: dict, rename: dict[str, str] | None = None) -> tuple[dict, dict, dict]:
    """Python API keywords -> (PruneSettings fields, method options, the rest: Ultralytics arguments)."""
    from .methods.base import option_owners

    public = {(rename or {}).get(f.name, f.name): f.name for f in flag_fields(PruneSettings)}
    owners = option_owners()
    settings, options, rest = {}, {}, {}
    for key, value in kwargs.items():
        if key in public:
            settings[public[key]] = value
        elif key in owners:
            options[key] = value
        else:
            rest[key] = value
    return settings, options, rest
