"""Damage: one-shot pruning of a trained detector, measured on a few of the user's images, with compensation.

Why (issue 9, docs/results.md): with a pretrained detector and about a hundred images, training forgets faster than it
recovers. On the COCO YOLOv5n and 96 real images, -20 % FLOPs: 30 epochs of pruning while fine-tuning end at 0.175
mAP50-95, 90 epochs at 0.129, a higher learning rate at 0.152-0.161, while these steps without any training reach
0.17-0.19, and fine-tuning their result for 30 epochs ends at 0.183-0.211 (seven runs). So this
method does not train: `yolo-prune prune --method damage --data D` measures on those images how much masking each
channel would change the features the detection head reads (methods/damage.py: second order, random projections), then
takes `damage_steps` steps towards the target (train/post_training.py). Each step masks the least damaging channels per
FLOP under the shared budget, continuing from the current masks, and lets the consumers of the newly masked channels
absorb what the kept channels predict of them (train/compensate.py, fitted on the same images). The damage is measured
again before every step, on the network pruned so far (`damage_rescore`): on the COCO YOLOv5n that made no difference at
-20 % (0.171-0.194 either way) and kept 0.074 instead of 0.024 at -37 % (docs/results.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import YoloPruneError
from ..masks.mask import MaskSet
from ..options import setting
from .base import MethodOptions, PruningMethod, register_method
from .damage import HeadDamage

PROJECTIONS = 4  # random projections per batch of calibration images (the estimate's noise falls as 1/sqrt)
BATCH = 16  # calibration images per forward-backward pass (memory)


@dataclass
class DamageOptions(MethodOptions):
    damage_steps: int = setting(8, "damage: pruning steps towards the target, with compensation after each")
    damage_images: int = setting(96, "damage: images of --data that damage and compensation are measured on")
    damage_imgsz: int = setting(320, "damage: image size of those measurements (letterboxed, as at inference)")
    damage_rescore: bool = setting(True, "damage: measure again before every step, on the network pruned so far "
                                   "(off: once, on the dense network)")  # fmt: skip

    def check(self):
        if self.damage_steps < 1:
            raise YoloPruneError(f"--damage-steps must be at least 1, got {self.damage_steps}.")
        if self.damage_images < 1:
            raise YoloPruneError(f"--damage-images must be at least 1, got {self.damage_images}.")
        if self.damage_imgsz < 32 or self.damage_imgsz % 32:
            raise YoloPruneError(f"--damage-imgsz must be a multiple of 32 (>= 32), got {self.damage_imgsz}.")


@register_method("damage")
class Damage(PruningMethod):
    one_shot = True
    in_training = False  # in training, effp / asfp take `--criterion damage`
    Options = DamageOptions

    def __init__(self, graph, budget, options=None):
        super().__init__(graph, budget, options)
        self.measured = None  # the scores of the last measurement

    def calibration(self):
        return self.options.damage_images, self.options.damage_imgsz

    @property
    def one_shot_steps(self) -> int:
        return self.options.damage_steps

    def score(self, ctx):
        if ctx.images is None:
            raise YoloPruneError("Method 'damage' measures channels on images: give --data (a dataset YAML or a "
                                 "folder of images).")  # fmt: skip
        if self.measured is None or self.options.damage_rescore:
            estimate = HeadDamage(self.graph, decay=0.0, projections=PROJECTIONS)
            estimate.observe(ctx.model, ctx.images, seed=ctx.step or 0, batch=BATCH)
            self.measured = estimate.scores()
        return self.measured

    def prune_step(self, ctx) -> MaskSet:
        """Continue from the current masks: masked channels stay masked (their consumers have absorbed them)."""
        return MaskSet(self.graph, self.budget.allocate(self.score(ctx), ctx.target_gflops, start=ctx.masks.masks))
