"""Compensation: when a pruning step masks channels, their consumers absorb what the kept channels can predict.

A conv that loses input channels R loses W_R * x_R. In a trained network x_R is largely predictable from the inputs
that stay, per pixel: x_R ~ A x_K + b, with A and b fitted by ridge least squares on the conv's inputs over recent
training images. A mixes channels per pixel, so it commutes with a convolution of any kernel size:
W_R * (A x_K) = (W_R A) * x_K. The step therefore adds W_R A to the kept input weights and moves the constant W_R b
into the conv's bias or its BatchNorm's running mean; the output then changes only by what the kept channels cannot
express. (The same idea as neuron merging, Kim et al., NeurIPS 2020, and the least-squares reconstruction of He,
Zhang, Sun, ICCV 2017, done at every in-training step.) Why it matters: with a few hundred images, training cannot
re-learn what an abruptly zeroed channel carried; the regression hands it over on the spot.

A masked channel's own consumer weights are left alone (nothing flows through them while it is masked), and the rows
of A and b fitted for it are kept: when a method regrows the channel, its contribution is subtracted back, so the
model does not count it twice. Depthwise and shared convs are not compensated (no cross-channel weights / one set of
weights for several inputs).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..graph.analyze import ChannelGraph
from ..nn.modes import eval_mode
from ..slim.merge import absorb_inputs

RIDGE = 1e-3  # ridge strength relative to the mean input variance


class Compensation:
    """Fits and applies the per-conv channel predictions of each pruning step; undoes them on regrowth."""

    def __init__(self, graph: ChannelGraph):
        self.graph = graph
        count: dict[str, int] = {}
        for s in graph.sites:
            count[s.site.name] = count.get(s.site.name, 0) + 1
        self.sites = {s.site.name: s for s in graph.sites if count[s.site.name] == 1 and not s.site.depthwise}
        # conv name -> {input channel: (prediction row over the conv's inputs, offset)} for masked channels
        self.rows: dict[str, dict[int, tuple[torch.Tensor, float]]] = {}

    def statistics(self, model: nn.Module, images: torch.Tensor | None, names: list[str] | None = None) -> dict:
        """Mean and covariance of the input channels of the named (default: every) compensable conv on `images`,
        from one eval-mode forward."""
        names = list(self.sites) if names is None else names
        return {} if images is None or not names else _input_statistics(model, names, images)

    def losing(self, old_alive: np.ndarray, new_alive: np.ndarray) -> list[str]:
        """The compensable convs that lose input channels when switching from `old_alive` to `new_alive`."""
        dead = old_alive & ~new_alive
        return [n for n, s in self.sites.items() if dead[s.in_comp].any()]

    def step(self, models: list[nn.Module], stats: dict, old_alive: np.ndarray, new_alive: np.ndarray) -> int:
        """Switching from `old_alive` to `new_alive` components: undo regrown channels, compensate newly masked ones.

        `stats` are `statistics()` of the model under the old masks. Returns the number of convs compensated.
        """
        regrown = ~old_alive & new_alive
        dead = old_alive & ~new_alive
        for name, s in self.sites.items():
            for r in np.flatnonzero(regrown[s.in_comp]).tolist():
                row = self.rows.get(name, {}).pop(int(r), None)
                if row is not None:
                    for m in models:
                        absorb_inputs(m, s.site, [int(r)], row[0][None], torch.tensor([row[1]]), sign=-1.0)
        done = 0
        for name, s in self.sites.items():
            if name not in stats or not dead[s.in_comp].any():
                continue
            removed = np.flatnonzero(dead[s.in_comp])
            kept = np.flatnonzero(old_alive[s.in_comp] & new_alive[s.in_comp])
            a, b = _fit(*stats[name], removed, kept)
            for m in models:
                absorb_inputs(m, s.site, removed.tolist(), a, b, sign=1.0)
            self.rows.setdefault(name, {}).update({int(r): (a[i], float(b[i])) for i, r in enumerate(removed)})
            done += 1
        return done

    def state_dict(self) -> dict:
        return {n: {r: (a.clone(), b) for r, (a, b) in rows.items()} for n, rows in self.rows.items()}

    def load_state_dict(self, state: dict) -> None:
        self.rows = {n: {int(r): (a.clone(), float(b)) for r, (a, b) in rows.items()} for n, rows in state.items()}


@torch.no_grad()
def _input_statistics(model: nn.Module, names: list[str], images: torch.Tensor) -> dict:
    """Per named conv: (mean, covariance) over all pixels of its input, float64, from one eval-mode forward."""
    modules = dict(model.named_modules())
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name):
        def hook(_m, args):
            x = args[0].detach().double().permute(0, 2, 3, 1).reshape(-1, args[0].shape[1])
            mean = x.mean(0)
            xc = x - mean
            found[name] = (mean.cpu(), (xc.T @ xc / len(x)).cpu())

        return hook

    hooks = [modules[n].register_forward_pre_hook(keep(n)) for n in names]
    try:
        with eval_mode(model):
            model(images)
    finally:
        for h in hooks:
            h.remove()
    return found


def _ridge(cov: torch.Tensor) -> float:
    return RIDGE * max(float(cov.diagonal().mean()), 1e-12)


def _fit(mean: torch.Tensor, cov: torch.Tensor, removed: np.ndarray, kept: np.ndarray):
    """Ridge regression x_removed ~ A x_kept + b from input statistics; A as rows over all input channels."""
    a_full = torch.zeros(len(removed), len(mean), dtype=torch.float64)
    if len(kept) == 0:
        return a_full, mean[removed]
    cov_kk = cov[kept][:, kept]
    a = torch.linalg.solve(cov_kk + _ridge(cov_kk) * torch.eye(len(kept), dtype=cov.dtype), cov[kept][:, removed]).T
    a_full[:, kept] = a
    return a_full, mean[removed] - a @ mean[kept]
