"""Validation during a pruning run, when a method needs a figure now (ctx.validate), not at the epoch's end."""

from __future__ import annotations

import math
from copy import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..nn.modes import eval_mode


class QuickValidation:
    """Ultralytics' detection metrics of a model on the first `images` validation images (0: all).

    The loop is the validator's own (preprocess, inference, NMS, update_metrics, get_stats) without its loss, plots,
    callbacks and printing: over every batch it gives Ultralytics' figures exactly (tests/train/test_quick_val.py).
    The model is only read (eval mode for the call, its mode restored after).
    """

    def __init__(self, loader, data: dict, args, device, save_dir):
        from ultralytics.models.yolo.detect import DetectionValidator

        args = copy(args)
        args.plots, args.save_json, args.save_txt = False, False, False
        self.validator = v = DetectionValidator(loader, save_dir=save_dir, args=args)
        v.data, v.device, v.training = data, torch.device(device), True
        v.args.quantize = None  # fp32 inference: the figure must not depend on AMP

    def images(self, images: int = 0) -> int:
        """How many images a call with `images` measures: the first ones, in whole batches of the loader."""
        loader = self.validator.dataloader
        n = len(loader.dataset)
        return min(math.ceil(images / loader.batch_size) * loader.batch_size, n) if images else n

    def _batches(self, images: int) -> DataLoader:
        """The loader's first batches, always from the start: Ultralytics' loader keeps one endless iterator, so
        stopping early in it would shift every later pass (and a resumed run's) to other images."""
        loader = self.validator.dataloader
        dataset = loader.dataset
        return DataLoader(Subset(dataset, range(self.images(images))), batch_size=loader.batch_size, shuffle=False,
                          num_workers=0, collate_fn=dataset.collate_fn)  # fmt: skip

    @torch.no_grad()
    def __call__(self, model: nn.Module, images: int = 0) -> dict:
        v = self.validator
        with eval_mode(model):
            v.init_metrics(model)
            for batch in self._batches(images):
                batch = v.preprocess(batch)
                v.update_metrics(v.postprocess(model(batch["img"])), batch)
            return v.get_stats()
