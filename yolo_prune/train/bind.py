"""`prune_trainer(...)`: pruning from Ultralytics' own `model.train(trainer=...)`, settings and all.

Ultralytics calls the trainer class as `trainer(overrides=..., _callbacks=...)` and refuses train keywords it does not
know, so the pruning settings travel in the class:

    from ultralytics import YOLO
    from yolo_prune import prune_trainer

    YOLO("yolov7.yaml").train(trainer=prune_trainer(flops=0.37, method="effp"), data="coco.yaml", epochs=300)

The keywords are the fields of `PruneSettings` (methods/schedule.py), the one definition of a pruning run.
"""

from __future__ import annotations

import dataclasses

from ultralytics.utils import DEFAULT_CFG

from ..errors import YoloPruneError
from ..methods.schedule import PruneSettings
from .trainer import PruneTrainer


def prune_trainer(**settings) -> type[PruneTrainer]:
    """A PruneTrainer subclass bound to `PruneSettings(**settings)`, validated now (one clear error if wrong)."""
    fields = {f.name for f in dataclasses.fields(PruneSettings)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise YoloPruneError(f"Unknown pruning setting(s) {unknown}; prune_trainer() takes {sorted(fields)}.")
    bound = PruneSettings(**settings).validate()

    class BoundPruneTrainer(PruneTrainer):
        def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None, prune: PruneSettings | None = None):
            super().__init__(cfg, overrides, _callbacks, prune=prune or dataclasses.replace(bound))

    BoundPruneTrainer.settings = bound  # what it prunes by, for the caller to read
    return BoundPruneTrainer
