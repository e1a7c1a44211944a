"""Settings as dataclasses: the machinery behind `PruneSettings` (methods/settings.py) and the methods' options.

A setting is a dataclass field with a default and a help text (`setting(...)`). The command line flags
(`--round-to`) and the Python API keywords (`round_to=`) are generated from the fields (`add_flags`, `given_flags`,
methods/settings.py `split_keywords`), values are type-checked once (`Options.validate`), and the whole dataclass is
saved with the run. Adding a field is enough to get its flag and keyword.

Cheap to import (no torch).
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, asdict, field, fields

from .errors import YoloPruneError


def setting(default, help, *, choices=None):
    """A dataclass field with its help text; `help` and `choices` may be callables that give them when the parser is
    built (for text drawn from the method registry)."""
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
        help_text = f.metadata.get("help", "")
        help_text = help_text() if callable(help_text) else help_text
        help_text += f" (default: {default})" if default is not None else ""
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
