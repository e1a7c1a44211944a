"""Post-training pruning: a one-shot method taken in several steps, with compensation between them (no training).

For methods that measure on images (`calibration()`, e.g. methods/oneshot_damage.py): each step prunes part of the
way to the target from the current masks; the consumers of the newly masked channels then absorb what the kept
channels predict of them (train/compensate.py, fitted on the same images), and the masked channels are zeroed, so the
next step measures the network as it now is.
"""

from __future__ import annotations

from ..masks.mask import MaskSet
from ..methods.base import PruningMethod
from ..methods.context import PruneContext
from .compensate import Compensation


def prune_in_steps(method: PruningMethod, ctx: PruneContext, steps: int) -> MaskSet:
    """Masks meeting `ctx.target_gflops` after `steps` steps; `ctx.model` ends compensated, masked channels zeroed."""
    graph, compensation = method.graph, Compensation(method.graph)
    start, final = method.budget.cost.total(ctx.masks.masks), ctx.target_gflops
    for k in range(steps):
        ctx.step, ctx.progress = k, (k + 1) / steps
        ctx.target_gflops = start - (start - final) * (k + 1) / steps
        new = method.prune_step(ctx)
        old_alive, new_alive = graph.alive_components(ctx.masks.masks), graph.alive_components(new.masks)
        stats = compensation.statistics(ctx.model, ctx.images, compensation.losing(old_alive, new_alive))
        compensation.step([ctx.model], stats, old_alive, new_alive)
        new.apply(ctx.model)
        ctx.masks = new
    return ctx.masks
