"""Pruning methods, one file each, registered by key (`--method KEY`)."""

# registration happens on import; keep this list sorted
from . import asfp, effp, l1, random, uniform  # noqa: E402, F401, I001
from .base import PruningMethod, get_method, list_methods, register_method

__all__ = ["PruningMethod", "get_method", "list_methods", "register_method"]
