"""L1: one-shot global pruning by the L1 norm of BN-folded filters, normalised per layer and by FLOPs.

The baseline and smoke path of `yolo-prune prune`. Scores are per-layer normalised filter norms; the shared budget
removes, globally, the channels with the least importance per FLOP saved until the FLOPs target is met.
"""

from .base import PruningMethod, register_method
from .criteria import FoldedL1


@register_method("l1")
class L1(PruningMethod):
    one_shot = True
    in_training = False  # in training, effp / asfp rank by measured importance; uniform / random are the baselines

    def score(self, ctx):
        return FoldedL1(self.graph)(ctx.model)
