"""Pruning methods, one file each, registered by key (`--method KEY`), on the contract of base.py / context.py."""

# registration happens on import; keep this list sorted
from . import asfp, effp, fpagl, iw, l1, msvfp, oneshot_damage, random, uniform  # noqa: E402, F401, I001
from .base import MethodOptions, PruningMethod, get_method, list_methods, register_method
from .context import PruneContext

__all__ = ["MethodOptions", "PruneContext", "PruningMethod", "get_method", "list_methods", "register_method"]
