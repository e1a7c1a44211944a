"""Channel groups and mask-aware FLOPs of an Ultralytics detection model.

`analyze(model)` traces the model once (see trace.py) and returns a `ChannelGraph`: the prunable channel groups, every
conv site with the group channel ("component") each of its input and output channels belongs to, and a cost model
that predicts Ultralytics' `get_flops` for any choice of kept channels, before anything is cut.

FLOPs convention: Ultralytics GFLOPs = 2 x MACs as counted by thop (conv: out_elements * cin/groups * kh*kw; BN:
4 * elements). Everything the trace does not see (DFL, attention matmuls, barriers) is a fixed remainder, measured
as thop(model) minus the traced part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from ..errors import YoloPruneError
from . import rules  # noqa: F401  (registers the Ultralytics channel rules)
from .trace import FIXED, ConvSite, Tracer, record_forward


@dataclass
class ChannelGroup:
    """Channels that are kept or removed together; `width` units, each unit one channel of every member conv."""

    name: str  # module name of the first member, e.g. "model.2.cv1"
    members: list[str]  # conv module names whose outputs live in this group
    width: int
    gid: int


@dataclass
class SiteIndex:
    """A conv site with its channels mapped to global component ids (-1 = fixed)."""

    site: ConvSite
    in_comp: np.ndarray
    out_comp: np.ndarray


class ChannelGraph:
    """Prunable channel groups of one model, and the cost model over them."""

    def __init__(self, sites, comp_of_label, n_comp, barriers, imgsz):
        self.imgsz = imgsz
        self.barriers = barriers
        self.sites = [SiteIndex(s, comp_of_label[s.inputs], comp_of_label[s.outputs]) for s in sites]
        self.n_comp = n_comp
        self.groups, self.comp_group, self.comp_local = self._build_groups(n_comp)
        self.untraced_macs = 0.0

    def _build_groups(self, n_comp):
        # components that are output channels of one conv belong to one group (union-find over components)
        parent = list(range(n_comp))

        def find(a):
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for s in self.sites:
            live = s.out_comp[s.out_comp >= 0]
            for c in live[1:]:
                ra, rb = find(int(live[0])), find(int(c))
                if ra != rb:
                    parent[rb] = ra
        order: dict[int, list[int]] = {}  # group root -> its components, ordered by first appearance
        members: dict[int, list[str]] = {}
        seen = np.zeros(n_comp, bool)
        for s in self.sites:
            for c in s.out_comp:
                if c >= 0:
                    root = find(int(c))
                    if s.site.name not in members.setdefault(root, []):
                        members[root].append(s.site.name)
                    if not seen[c]:
                        seen[c] = True
                        order.setdefault(root, []).append(int(c))
        comp_group = np.full(n_comp, -1, np.int64)
        comp_local = np.full(n_comp, -1, np.int64)
        groups = []
        for gid, (root, comps) in enumerate(order.items()):
            comp_group[comps] = gid
            comp_local[comps] = np.arange(len(comps))
            name = members[root][0].removesuffix(".conv")
            groups.append(ChannelGroup(name=name, members=members[root], width=len(comps), gid=gid))
        return groups, comp_group, comp_local

    # -- masks <-> components -----------------------------------------------------------------------------------------
    def full_masks(self) -> dict[str, np.ndarray]:
        return {g.name: np.ones(g.width, bool) for g in self.groups}

    def alive_components(self, masks: dict[str, np.ndarray]) -> np.ndarray:
        """Component alive vector with one extra trailing True, so index -1 (fixed) reads as alive."""
        alive = np.ones(self.n_comp + 1, bool)
        for g in self.groups:
            m = masks.get(g.name)
            if m is not None:
                if len(m) != g.width:
                    raise YoloPruneError(f"Mask for group {g.name} has {len(m)} channels, the group has {g.width}.")
                comps = np.flatnonzero(self.comp_group == g.gid)
                alive[comps[np.argsort(self.comp_local[comps])]] = np.asarray(m, bool)
        return alive

    def keep_indices(self, masks) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """conv name -> (kept output channel indices, kept input channel indices)."""
        alive = self.alive_components(masks)
        return {s.site.name: (np.flatnonzero(alive[s.out_comp]), np.flatnonzero(alive[s.in_comp])) for s in self.sites}

    # -- cost model ---------------------------------------------------------------------------------------------------
    def traced_macs(self, alive: np.ndarray) -> float:
        total = 0.0
        for s in self.sites:
            cout = int(alive[s.out_comp].sum())
            cin = 1 if s.site.depthwise else int(alive[s.in_comp].sum())
            total += s.site.hw * (cout * cin * s.site.kernel + (4 * cout if s.site.norm_name else 0))
        return total

    def gflops(self, masks: dict[str, np.ndarray] | None = None) -> float:
        """Predicted Ultralytics GFLOPs at `self.imgsz` with only the channels in `masks` kept."""
        alive = self.alive_components(masks or {})
        return 2 * (self.traced_macs(alive) + self.untraced_macs) / 1e9

    def params(self, model: nn.Module, masks: dict[str, np.ndarray] | None = None) -> int:
        """Parameter count after slimming: dense count minus the conv/BN parameters of removed channels."""
        alive = self.alive_components(masks or {})
        modules = dict(model.named_modules())
        total = sum(p.numel() for p in model.parameters())
        for s in {s.site.name: s for s in self.sites}.values():  # a conv called twice is one set of weights
            conv = modules[s.site.name]
            cout, cin = int(alive[s.out_comp].sum()), int(alive[s.in_comp].sum())
            cin_per_group = 1 if s.site.depthwise else cin
            removed = conv.weight.numel() - cout * cin_per_group * s.site.kernel
            removed += (conv.out_channels - cout) * ((conv.bias is not None) + 2 * bool(s.site.norm_name))
            total -= removed
        return int(total)

    def summary(self) -> list[dict]:
        return [{"group": g.name, "width": g.width, "members": g.members} for g in self.groups]


def analyze(model: nn.Module, imgsz: int | tuple[int, int] = 640) -> ChannelGraph:
    """Trace `model` (an Ultralytics DetectionModel) and build its channel groups and cost model at `imgsz`."""
    from ultralytics.utils.torch_utils import get_flops

    size = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    stride = max(int(model.stride.max()), 32) if hasattr(model, "stride") else 32
    # conv output sizes scale exactly with the image when it is a multiple of the stride: profile a small proxy
    proxy = (stride, stride) if size[0] % stride == 0 and size[1] % stride == 0 else size
    scale = (size[0] // proxy[0]) * (size[1] // proxy[1])
    rec = record_forward(model, proxy)
    tracer = Tracer(model, rec.out_channels)
    _trace_layers(tracer, model)
    calls: dict[str, int] = {}
    for s in tracer.sites:  # k-th trace call of a conv takes the k-th recorded execution
        k = calls.get(s.name, 0)
        calls[s.name] = k + 1
        s.hw = rec.conv_hw[s.name][k] * scale
    roots = np.array([tracer.uf.find(a) for a in range(len(tracer.uf.parent))], np.int64)
    uniq = np.unique(roots[roots != FIXED])
    comp_of_label = np.full(len(roots), -1, np.int64)
    comp_of_label[roots != FIXED] = np.searchsorted(uniq, roots[roots != FIXED])
    graph = ChannelGraph(tracer.sites, comp_of_label, len(uniq), tracer.barriers, size)
    dense = graph.traced_macs(graph.alive_components({}))
    measured = get_flops(model, list(size)) / 2 * 1e9
    graph.untraced_macs = max(measured - dense, 0.0)
    return graph


def _trace_layers(t: Tracer, model: nn.Module):
    """Replay DetectionModel._predict_once: each layer reads the outputs named by its `.f`."""
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential) or not all(hasattr(m, "f") for m in layers):
        raise YoloPruneError(f"{type(model).__name__} is not an Ultralytics layer-list model; cannot analyse it.")
    outputs: list = []
    x = t.fixed(3)  # the image
    for m in layers:
        if m.f != -1:
            x = outputs[m.f] if isinstance(m.f, int) else [x if j == -1 else outputs[j] for j in m.f]
        x = t.run(m, x)
        outputs.append(x)
