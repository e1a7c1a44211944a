"""`prune_trainer(...)`: pruning from Ultralytics' own `model.train(trainer=...)`, settings and all.

Ultralytics calls the trainer class as `trainer(overrides=..., _callbacks=...)` and refuses train keywords it does not
know, so the pruning settings travel in the class:

    from ultralytics import YOLO
    from yolo_prune import prune_trainer

    YOLO("yolov7.yaml").train(trainer=prune_trainer(flops=0.37, method="effp"), data="coco.yaml", epochs=300)

The keywords are the fields of `PruneSettings` and the chosen method's options (methods/settings.py), the one
definition of a pruning run: `prune_trainer(flops=0.37, method="effp", regrow=0.2)`.
"""

from __future__ import annotations

import dataclasses

from ultralytics.utils import DEFAULT_CFG

from ..errors import YoloPruneError
from ..methods.settings import PruneSettings, split_keywords
from ..options import flag_fields
from .trainer import PruneTrainer


def prune_trainer(**settings) -> type[PruneTrainer]:
    """A PruneTrainer subclass bound to `PruneSettings(**settings)` (method options included), validated now (one
    clear error if wrong)."""
    fields, options, unknown = split_keywords(settings)
    if unknown:
        names = sorted(f.name for f in flag_fields(PruneSettings))
        raise YoloPruneError(f"Unknown pruning setting(s) {sorted(unknown)}; prune_trainer() takes {names} and the "
                             "method's options (yolo-prune train --help lists them).")  # fmt: skip
    bound = PruneSettings(**fields, options=options).validate()

    class BoundPruneTrainer(PruneTrainer):
        def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None, prune: PruneSettings | None = None):
            super().__init__(cfg, overrides, _callbacks, prune=prune or dataclasses.replace(bound))

    BoundPruneTrainer.settings = bound  # what it prunes by, for the caller to read
    return BoundPruneTrainer
