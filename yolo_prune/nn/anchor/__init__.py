"""Anchor-based YOLOv5/YOLOv7 detectors in the Ultralytics model family: heads, YAML parser, model, loss."""

from .heads import AnchorDetect, IDetect, ImplicitA, ImplicitM, fold_pruned_implicit_a, implicit_a_feeds
from .loss import AnchorLoss
from .model import AnchorDetectionModel
from .parse import parse_anchor_model

__all__ = [
    "AnchorDetect", "AnchorDetectionModel", "AnchorLoss", "IDetect", "ImplicitA", "ImplicitM",
    "fold_pruned_implicit_a", "implicit_a_feeds", "parse_anchor_model",
]  # fmt: skip
