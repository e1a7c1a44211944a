"""Latency tables (lut.json): the format, its checks, the fit, the prediction and the measured staircase.

A table holds, per conv site of one model at one image size, batch, backend and precision, the median compute time of
the site's own graph (sitegraph.py) along each side's widths with the other side full, at full width, and at a few
diagonal points; plus the dense model's time and that of a *probe* (the model at about half width), timed together.
A table is data from a user (it may come from a Jetson): it is read with `json` and checked field by field.

The fit, per site: timings along an axis are made monotone and to end at the full-width time (`monotone`: noise on a
shared machine is one-sided and must not make a narrower site look slower); the interaction of the two sides
follows t(cin, cout) = t0 + (a(cout) - t0) *
(b(cin) - t0) / (T - t0), with a and b the axis curves, T the full-width time and t0 the part of the site that does not
scale with either side (launch, reorders), solved from each diagonal point in closed form and taken as the median.
This is exact for any cost of the form t0 + f(cout) g(cin), staircases in f and g included.

The whole model: isolated graphs run faster than the same convs inside the model (warm caches, no neighbours), so the
model is predicted as fixed + scale * (sum of site times), with fixed and scale solved from the dense and probe timings.
Both are timed interleaved in one run, so the two equations see the same machine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import YoloPruneError
from .sitegraph import check_spec

FORMAT, VERSION = "yolo-prune-latency", 1
BACKENDS = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
STAIR_FRACTION = 0.25  # a width step "drops latency" when it saves at least this share of the mean step's saving
GEOMETRY = ("name", "call", "cin", "cout", "kernel", "stride", "pad", "dilation", "depthwise", "in_hw", "act")


def monotone(values, full: float) -> np.ndarray:
    """The axis curve made non-decreasing and ending at the full-width time: each width's time is the least of its
    own and every wider width's. Noise on a shared machine is one-sided (a stalled run is slower, never faster), so a
    narrower width measured slower than a wider one is read as the wider one's time, not averaged with it."""
    values = np.append(np.asarray(values, float)[:-1], full) if len(values) else np.asarray([], float)
    return np.minimum.accumulate(values[::-1])[::-1]


def fit_offset(full: float, diagonal: list[tuple[float, float, float]]) -> float:
    """t0 of t = t0 + (a - t0)(b - t0)/(T - t0) from (t, a, b) triples: t0 = (t T - a b) / (T + t - a - b) each, median,
    clipped to [0, min(a, b, t)) so the axes keep a positive scaling part."""
    solved = []
    for t, a, b in diagonal:
        denominator = full + t - a - b
        if abs(denominator) > 1e-6 * full:
            solved.append((t * full - a * b) / denominator)
    if not solved:
        return 0.0
    ceiling = min(min(x) for x in diagonal) * 0.99
    return float(min(max(np.median(solved), 0.0), ceiling))


def stair_widths(widths, ms, fraction: float = STAIR_FRACTION) -> list[int]:
    """Widths (ascending) at which latency actually drops: w is kept when going down to it from the next wider width
    saves at least `fraction` of the mean saving per step; the full (last) width is always kept. On a plateau
    (channels padded to the same kernel block) only its widest width stays: narrower ones cost accuracy for nothing."""
    widths, ms = list(widths), monotone(ms, ms[-1]) if len(ms) else np.asarray(ms)
    if len(widths) < 2 or ms[-1] <= ms[0]:
        return widths[-1:] if len(widths) and ms[-1] <= ms[0] else widths
    mean_step = (ms[-1] - ms[0]) / (len(widths) - 1)
    return [w for w, here, above in zip(widths, ms, ms[1:]) if above - here >= fraction * mean_step] + widths[-1:]


class SiteCurve:
    """The fitted latency of one site as a function of its input and output widths (ms, isolated)."""

    def __init__(self, entry: dict):
        self.cin, self.cout, self.depthwise = entry["cin"], entry["cout"], entry["depthwise"]
        self.full = float(entry["ms_full"])
        self.out = (np.asarray(entry["cout_widths"], float), monotone(entry["ms_cout"], self.full))
        self.inp = (np.asarray(entry["cin_widths"], float), monotone(entry["ms_cin"], self.full))
        triples = [(t, self._axis(self.out, cout), self._axis(self.inp, cin)) for cin, cout, t in entry["diagonal"]]
        self.t0 = fit_offset(self.full, triples)

    def _axis(self, curve, width) -> float:
        widths, ms = curve
        return self.full if widths.size == 0 else float(np.interp(width, widths, ms))

    def __call__(self, cin: float, cout: float) -> float:
        a = self._axis(self.out, cout)
        if self.depthwise or self.inp[0].size == 0:
            return a
        b = self._axis(self.inp, cin)
        if self.out[0].size == 0:
            return b
        return self.t0 + (a - self.t0) * (b - self.t0) / (self.full - self.t0)


class LatencyTable:
    """A checked table and its fit: `predict(sites_widths)`, `site_ms`, `fixed_ms`, `scale`, `dense_ms`."""

    def __init__(self, data: dict, source: str = "the latency table"):
        check_table(data, source)
        self.data, self.source = data, source
        self.curves = [SiteCurve(s) for s in data["sites"]]
        self.dense_ms = float(data["dense_ms"])
        self.scale, self.fixed_ms = self._fit_model(data)

    def _fit_model(self, data) -> tuple[float, float]:
        """(scale, fixed) from dense = fixed + scale * S_dense and probe = fixed + scale * S_probe."""
        dense_sum = sum(c(c.cin, c.cout) for c in self.curves)
        probe = data.get("probe")
        if probe:
            probe_sum = sum(c(a, b) for c, (a, b) in zip(self.curves, probe["sites"]))
            dense_ms, probe_ms = float(probe["dense_ms"]), float(probe["ms"])
            if dense_sum - probe_sum > 1e-9 and dense_ms > probe_ms:
                scale = (dense_ms - probe_ms) / (dense_sum - probe_sum)
                fixed = dense_ms - scale * dense_sum
                if fixed >= 0:  # rescaled to this table's dense time (both timings are from one interleaved run)
                    ratio = self.dense_ms / dense_ms
                    return scale * ratio, fixed * ratio
                return self.dense_ms / dense_sum, 0.0  # the model shrinks faster than its sites: no fixed part
        return (1.0, self.dense_ms - dense_sum) if self.dense_ms >= dense_sum else (self.dense_ms / dense_sum, 0.0)

    @classmethod
    def load(cls, path) -> LatencyTable:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise YoloPruneError(f"Latency table '{path}' does not exist; measure one with `yolo-prune profile`."
                                 ) from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise YoloPruneError(f"Latency table '{path}' is not readable JSON ({e}).") from None
        return cls(data, str(path))

    def site_ms(self, i: int, cin: float, cout: float) -> float:
        """Site i's share of the model's latency at these widths (in-model ms)."""
        return self.scale * self.curves[i](cin, cout)

    def predict(self, widths: list[tuple[float, float]]) -> float:
        """Model latency (ms) with site i at widths[i] = (cin, cout)."""
        return self.fixed_ms + sum(self.site_ms(i, a, b) for i, (a, b) in enumerate(widths))

    def check_for(self, specs: list[dict], imgsz, batch: int, backend: str | None = None):
        """One clear error unless this table was measured for these sites (the model at imgsz), batch and backend."""
        d, where = self.data, self.source
        if list(d["imgsz"]) != list(imgsz) or d["batch"] != batch:
            raise YoloPruneError(f"{where} was measured at imgsz {d['imgsz']} batch {d['batch']}, not {list(imgsz)} "
                                 f"batch {batch}: profile again at this size (`yolo-prune profile --imgsz ...`).")
        if backend is not None and d["backend"] != backend:
            raise YoloPruneError(f"{where} was measured on {d['backend']}, not {backend}: pass --backend "
                                 f"{d['backend']} or a table measured on {backend}.")  # fmt: skip
        if len(specs) != len(d["sites"]):
            raise YoloPruneError(f"{where} has {len(d['sites'])} conv sites, this model {len(specs)}: it was "
                                 "measured for another model; profile this one.")  # fmt: skip
        for spec, site in zip(specs, d["sites"]):
            differs = [k for k in GEOMETRY if spec[k] != site[k]]
            if differs:
                raise YoloPruneError(f"{where} does not fit this model: site {site['name']} differs in "
                                     f"{', '.join(differs)}; it was measured for another model, profile this one.")


def check_table(d, where: str):
    """Field-by-field check of a table read from a file (types, ranges, lengths); one error naming the problem."""
    def fail(msg):
        raise YoloPruneError(f"{where} is not a valid latency table: {msg}.")

    if not isinstance(d, dict) or d.get("format") != FORMAT:
        fail(f"'format' must be '{FORMAT}' (write tables with `yolo-prune profile` or the Jetson kit's "
             "profile_latency.py)")
    if d.get("version") != VERSION:
        fail(f"version {d.get('version')!r} is not {VERSION}")
    if d.get("backend") not in BACKENDS or d.get("precision") not in PRECISIONS:
        fail(f"backend must be one of {BACKENDS} and precision one of {PRECISIONS}")
    if not (_ints(d.get("imgsz"), 2) and _int(d.get("batch"))):
        fail("'imgsz' must be two positive integers and 'batch' a positive integer")
    if not _ms(d.get("dense_ms")):
        fail("'dense_ms' must be a positive time in ms")
    if not isinstance(d.get("sites"), list) or not d["sites"]:
        fail("'sites' must be a non-empty list")
    for site in d["sites"]:
        _check_site(site, fail)
    probe = d.get("probe")
    if probe is not None:
        if not (isinstance(probe, dict) and _ms(probe.get("ms")) and _ms(probe.get("dense_ms"))
                and isinstance(probe.get("sites"), list) and len(probe["sites"]) == len(d["sites"])
                and all(_ints(p, 2) for p in probe["sites"])):  # fmt: skip
            fail("'probe' must hold 'ms', 'dense_ms' and one [cin, cout] pair per site")


def _check_site(site, fail):
    if not isinstance(site, dict):
        fail("every site must be an object")
    try:
        check_spec(site)
    except ValueError as e:
        fail(str(e))
    if not _ms(site.get("ms_full")) or not isinstance(site.get("call"), int):
        fail(f"site {site['name']!r}: 'ms_full' must be a positive time and 'call' an integer")
    for side, full in (("cout", site["cout"]), ("cin", site["cin"])):
        widths, ms = site.get(f"{side}_widths"), site.get(f"ms_{side}")
        if not (isinstance(widths, list) and isinstance(ms, list) and len(widths) == len(ms)):
            fail(f"site {site['name']!r}: '{side}_widths' and 'ms_{side}' must be lists of one length")
        if widths and not (_ints(widths, len(widths)) and widths == sorted(set(widths)) and widths[-1] == full
                           and all(_ms(t) for t in ms)):  # fmt: skip
            fail(f"site {site['name']!r}: '{side}_widths' must rise to {full} with a positive time for each")
    for point in site.get("diagonal", []):
        if not (isinstance(point, list) and len(point) == 3 and _ints(point[:2], 2) and _ms(point[2])):
            fail(f"site {site['name']!r}: each diagonal point must be [cin, cout, ms]")


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _ints(v, n) -> bool:
    return isinstance(v, list) and len(v) == n and all(_int(x) for x in v)


def _ms(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
