"""One conv site as its own ONNX graph, and the measurement plan of a latency table's sites.

A site's graph is its Conv (BatchNorm folded in, as in an exported model) and its activation.

A *site spec* is plain JSON data written by `yolo-prune profile` (one entry of a latency table):

    {"name": "model.2.cv1.conv", "call": 0, "cin": 64, "cout": 64, "kernel": [3, 3], "stride": [1, 1],
     "pad": [1, 1], "dilation": [1, 1], "depthwise": false, "in_hw": [80, 80], "act": {"op": "silu"}}

`site_graph(spec, cin, cout, batch)` builds the graph of that site at other widths, with random weights (latency does
not depend on their values). `measure_sites(table, time_points)` times every site of a table at the points
`site_points` lists (full width, each side with the other full, three diagonal points), in interleaved rounds of at
most CHUNK graphs that each include one reference graph, so a change of machine load between rounds cancels, and
writes the medians into the table. This file is shared verbatim with the Jetson kit (deploy/jetson/sitegraph.py; a test
keeps the copies identical), so it is Python 3.8 and imports only numpy and onnx.
"""

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

OPSET = 17  # as the exported models (export/onnx.py): TensorRT 8.5 reads it
ACTIVATIONS = ("identity", "silu", "relu", "leaky_relu", "sigmoid", "hardswish")
INPUT, OUTPUT = "x", "y"
CHUNK = 12  # graphs alive (and interleaved) at once, the reference included
DIAGONAL = (0.25, 0.5, 0.75)  # fractions of both sides at which the interaction of cin and cout is measured


def check_spec(spec: Dict) -> None:
    """Raise ValueError naming what is wrong in a site spec (a table is data from a user: checked before use)."""
    for key, kind in (("name", str), ("cin", int), ("cout", int), ("depthwise", bool)):
        if not isinstance(spec.get(key), kind):
            raise ValueError("site %r: '%s' must be a %s" % (spec.get("name"), key, kind.__name__))
    for key in ("kernel", "stride", "pad", "dilation", "in_hw"):
        pair = spec.get(key)
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int) and v >= 0 for v in pair)):
            raise ValueError("site %r: '%s' must be two integers >= 0" % (spec["name"], key))
    act = spec.get("act")
    if not isinstance(act, dict) or act.get("op") not in ACTIVATIONS:
        raise ValueError("site %r: 'act' must be {'op': one of %s}" % (spec["name"], ", ".join(ACTIVATIONS)))
    if spec["cin"] < 1 or spec["cout"] < 1 or min(spec["kernel"] + spec["stride"] + spec["in_hw"]) < 1:
        raise ValueError("site %r: widths, kernel, stride and input size must be >= 1" % spec["name"])


def site_graph(spec: Dict, cin: int, cout: int, batch: int = 1, seed: int = 0):
    """The ONNX ModelProto of the site at `cin` input and `cout` output channels (equal for a depthwise site)."""
    from onnx import TensorProto, helper, numpy_helper

    if spec["depthwise"] and cin != cout:
        raise ValueError("site %r is depthwise: cin and cout must be equal, got %d and %d" % (spec["name"], cin, cout))
    groups = cin if spec["depthwise"] else 1
    rng = np.random.default_rng(seed)
    kh, kw = spec["kernel"]
    weight = (rng.standard_normal((cout, cin // groups, kh, kw)) * 0.05).astype(np.float32)
    bias = (rng.standard_normal(cout) * 0.05).astype(np.float32)
    conv = helper.make_node("Conv", [INPUT, "w", "b"], ["conv"], kernel_shape=[kh, kw], strides=spec["stride"],
                            pads=spec["pad"] * 2, dilations=spec["dilation"], group=groups)  # fmt: skip
    nodes = [conv] + _activation(spec["act"], "conv", OUTPUT)
    h, w = spec["in_hw"]
    graph = helper.make_graph(
        nodes, spec["name"],
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch, cin, h, w])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [batch, cout] + out_hw(spec))],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="yolo-prune")
    model.ir_version = 8  # readable by the ONNX Runtime and TensorRT 8.5 parser of JetPack 5
    return model


def out_hw(spec: Dict) -> List[int]:
    """Output height and width of the site's conv."""
    return [(n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(spec["in_hw"], spec["pad"], spec["dilation"], spec["kernel"], spec["stride"])]


def _activation(act: Dict, x: str, y: str) -> list:
    from onnx import helper

    op = act["op"]
    if op == "silu":  # as torch exports nn.SiLU
        return [helper.make_node("Sigmoid", [x], ["sig"]), helper.make_node("Mul", [x, "sig"], [y])]
    if op == "leaky_relu":
        return [helper.make_node("LeakyRelu", [x], [y], alpha=float(act.get("alpha", 0.01)))]
    names = {"identity": "Identity", "relu": "Relu", "sigmoid": "Sigmoid", "hardswish": "HardSwish"}
    return [helper.make_node(names[op], [x], [y])]


def site_points(site: Dict) -> List[Tuple[int, int]]:
    """(cin, cout) points to time for one site: full first, then both axes, then the diagonal (both sides varied)."""
    full = (site["cin"], site["cout"])
    if site["depthwise"]:
        return [full] + [(w, w) for w in site["cout_widths"] if w != site["cout"]]
    points = [full] + [(site["cin"], w) for w in site["cout_widths"] if w != site["cout"]]
    points += [(w, site["cout"]) for w in site["cin_widths"] if w != site["cin"]]
    if site["cin_widths"] and site["cout_widths"]:
        for f in DIAGONAL:
            point = (_snap(site["cin_widths"], f * site["cin"]), _snap(site["cout_widths"], f * site["cout"]))
            if point != full and point not in points:
                points.append(point)
    return points


def _snap(widths: Sequence[int], value: float) -> int:
    return min(widths, key=lambda w: (abs(w - value), w))


def measure_sites(table: Dict, time_points: Callable, progress: Callable = print) -> Dict:
    """Fill every site of `table` with median compute times (ms). `time_points(items)` times the graphs of `items`,
    (site, cin, cout) triples, interleaved, and returns one median per item.

    Every round also times a reference graph (the median-sized site at full width), and each round's times are taken
    relative to it: a site measured while the machine was busier is not read as slower than one measured later."""
    sites = table["sites"]
    ref = reference_site(sites)
    refs, rel = [], []  # per site: {point: time / reference time of its round}
    for n, site in enumerate(sites):
        points = site_points(site)
        rel.append({})
        for start in range(0, len(points), CHUNK - 1):
            chunk = points[start : start + CHUNK - 1]
            medians = time_points([(ref, ref["cin"], ref["cout"])] + [(site, a, b) for a, b in chunk])
            refs.append(medians[0])
            rel[-1].update({p: t / medians[0] for p, t in zip(chunk, medians[1:])})
        if progress and (n % 5 == 0 or n == len(sites) - 1):
            progress("  site %d/%d %s: %.3f x the reference at full width, %d widths" % (
                n + 1, len(sites), site["name"], rel[-1][points[0]], len(points)))  # fmt: skip
    ref_ms = float(np.median(refs))
    for site, ratios in zip(sites, rel):
        ms = {p: r * ref_ms for p, r in ratios.items()}
        _store(site, ms[(site["cin"], site["cout"])], ms)
    table["reference"] = {"site": ref["name"], "call": ref["call"], "ms": ref_ms, "rounds": len(refs),
                          "spread": float(np.percentile(refs, 90) / np.percentile(refs, 10))}  # fmt: skip
    return table


def reference_site(sites: Sequence[Dict]) -> Dict:
    """The site of median work (MACs at full width): timed in every round as the common yardstick."""
    work = [s["cin"] * s["cout"] * s["kernel"][0] * s["kernel"][1] * s["in_hw"][0] * s["in_hw"][1]
            // (s["stride"][0] * s["stride"][1]) // (s["cin"] if s["depthwise"] else 1) for s in sites]  # fmt: skip
    return sites[sorted(range(len(sites)), key=lambda i: work[i])[len(sites) // 2]]


def _store(site: Dict, full_ms: float, ms: Dict):
    """Write a site's measurements into its table entry: along each axis (other side full) and the diagonal."""
    cin, cout = site["cin"], site["cout"]
    site["ms_full"] = full_ms
    if site["depthwise"]:
        site["ms_cout"] = [full_ms if w == cout else ms[(w, w)] for w in site["cout_widths"]]
        site["ms_cin"], site["diagonal"] = [], []
        return
    site["ms_cout"] = [full_ms if w == cout else ms[(cin, w)] for w in site["cout_widths"]]
    site["ms_cin"] = [full_ms if w == cin else ms[(w, cout)] for w in site["cin_widths"]]
    site["diagonal"] = [[a, b, t] for (a, b), t in ms.items() if a != cin and b != cout]
