"""Pruning methods, one file each, registered by key (`--method KEY`)."""

from .base import PruningMethod, get_method, list_methods, register_method

# registration happens on import; keep this list sorted
from . import asfp, effp, l1  # noqa: E402, F401, I001

__all__ = ["PruningMethod", "get_method", "list_methods", "register_method"]
