"""Latency as the budget's cost: the measured table behind the same greedy as FLOPs (masks/budget.py).

`latency_cost(model, graph, ...)` gives the cost model for a graph: from `--lut lut.json` (checked against the model,
image size, batch and backend), or measured once on this machine and cached under the user cache folder
(`$XDG_CACHE_HOME/yolo-prune/latency`, else `~/.cache/yolo-prune/latency`), keyed by the geometry of the model's conv
sites, the size, batch, step, backend, its version and the machine. Where it was read from is printed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import YoloPruneError
from ..graph.analyze import ChannelGraph
from .lut import LatencyTable, stair_widths
from .plan import plan_table

DEFAULT_STEP = 8


class LatencyCost:
    """Predicted latency (ms, batch and size of the table) as the budget's cost model."""

    name, unit = "latency", "ms"

    def __init__(self, graph: ChannelGraph, table: LatencyTable):
        self.graph, self.table = graph, table
        self.fixed = table.fixed_ms

    def site(self, i: int, cin: float, cout: float) -> float:
        return self.table.site_ms(i, cin, cout)

    def internal(self, ms: float) -> float:
        return ms

    def external(self, ms: float) -> float:
        return ms

    def total(self, masks: dict[str, np.ndarray] | None = None) -> float:
        alive = self.graph.alive_components(masks or {})
        return self.table.predict([(alive[s.in_comp].sum(), alive[s.out_comp].sum()) for s in self.graph.sites])

    def stairs(self, widths: list[int], group_cost) -> list[int]:
        return stair_widths(widths, [group_cost(w) for w in widths])


def latency_cost(model, graph: ChannelGraph, backend: str = "onnxruntime", lut=None, batch: int = 1, measure=None,
                 progress=print) -> LatencyCost:  # fmt: skip
    """The latency cost model of `graph` (of `model`, at the graph's image size): from `lut`, else from the cache,
    else measured now by `measure(model, path, imgsz, backend, batch)` into the cache (bench/profile.py
    `measure_to_cache`); without `measure`, a missing table is one clear error."""
    hw = tuple(graph.imgsz)
    specs = plan_table(model, graph, hw, batch, DEFAULT_STEP)["sites"]
    if lut is not None:
        table = LatencyTable.load(lut)
        table.check_for(specs, hw, batch, backend)
        progress(f"yolo-prune: latency table {lut} ({table.data['device']}, {table.data['precision']})")
        return LatencyCost(graph, table)
    path = cache_path(specs, hw, batch, backend)
    if path.is_file():
        try:
            table = LatencyTable.load(path)
            table.check_for(specs, hw, batch, backend)
            progress(f"yolo-prune: latency table read from the cache {path}")
            return LatencyCost(graph, table)
        except YoloPruneError as e:  # a damaged cache entry is measured again, never trusted
            progress(f"yolo-prune: ignoring the cached latency table ({e})")
    if measure is None:
        raise YoloPruneError(f"No latency table for this model at {hw[0]}x{hw[1]} on {backend}: measure one with "
                             "`yolo-prune profile --model M --imgsz ... --out lut.json` and pass --lut lut.json.")
    progress(f"yolo-prune: no latency table for this model on {backend} yet: measuring it once (minutes)")
    table = LatencyTable(measure(model, path, hw, backend, batch), str(path))
    progress(f"yolo-prune: latency table measured and cached at {path} (pass it as --lut elsewhere)")
    return LatencyCost(graph, table)


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "yolo-prune" / "latency"


def cache_path(specs: list[dict], imgsz, batch: int, backend: str) -> Path:
    """Cache file of a table: a hash of everything the measurement depends on (the sites' geometry, size, batch,
    step, backend and its version, this machine)."""
    import platform

    if backend == "onnxruntime":
        import onnxruntime

        runtime = f"onnxruntime {onnxruntime.__version__}"
    elif backend == "tensorrt":
        try:
            import tensorrt
        except ImportError as e:
            raise YoloPruneError(f"--backend tensorrt needs TensorRT here ({e}); or measure the table on the device "
                                 "(deploy/jetson/profile_latency.py) and pass --lut.") from None
        runtime = f"tensorrt {tensorrt.__version__}"
    else:
        raise YoloPruneError(f"Unknown backend '{backend}' for --latency; choose onnxruntime or tensorrt.")
    key = {"sites": specs, "imgsz": list(imgsz), "batch": batch, "step": DEFAULT_STEP, "runtime": runtime,
           "machine": [platform.node(), platform.machine(), platform.processor()]}  # fmt: skip
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir() / f"{backend}-{imgsz[0]}x{imgsz[1]}-b{batch}-{digest}.json"
