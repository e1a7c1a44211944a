"""The budget's ladder follows the measured staircase: a latency table of a kernel that pads input and output channels
to blocks of 16 never stops a group on a plateau, though the alignment grid (--round-to 8) allows multiples of 8."""

import numpy as np

from yolo_prune.graph.analyze import analyze
from yolo_prune.latency.cost import LatencyCost
from yolo_prune.latency.lut import LatencyTable
from yolo_prune.latency.plan import _axis, plan_table
from yolo_prune.masks.budget import Budget
from yolo_prune.methods.criteria import folded_l1
from yolo_prune.nn.build import load_model


def blocked_table(model, graph, imgsz, block):
    """Timings of a kernel computing whole blocks of `block` channels on both sides, on the full grid of both sides."""
    table = plan_table(model, graph, (imgsz, imgsz), 1, 8)
    padded = lambda c: -(-c // block) * block  # noqa: E731
    for site, s in zip(table["sites"], graph.sites):
        site["cin_widths"] = [] if site["depthwise"] else _axis(s.in_comp, 8)
        t = lambda cin, cout, hw=site["in_hw"]: 1e-6 * hw[0] * hw[1] * padded(cout) * padded(cin)  # noqa: E731
        cin, cout = site["cin"], site["cout"]
        site["ms_full"] = t(cin, cout)
        site["ms_cout"] = [t(cin if not site["depthwise"] else w, w) for w in site["cout_widths"]]
        site["ms_cin"] = [t(w, cout) for w in site["cin_widths"]]
        site["diagonal"] = []
    table.update(backend="onnxruntime", precision="fp32", device="synthetic", dense_ms=sum(
        s["ms_full"] for s in table["sites"]) + 1.0)  # fmt: skip
    return LatencyTable(table)


def test_widths_follow_the_measured_staircase():
    model = load_model("yolov8n.yaml")
    graph = analyze(model, 64)
    scores = folded_l1(model, graph)
    flops = Budget(graph, round_to=8)
    latency = Budget(graph, round_to=8, cost=LatencyCost(graph, blocked_table(model, graph, 64, 16)))

    def on_plateau(masks):
        """Cut groups whose width costs the same latency as 8 channels more: channels removed for nothing."""
        widths = {g.gid: int(masks[g.name].sum()) for g in graph.groups}
        return [gid for gid, w in widths.items() if w < graph.groups[gid].width
                and np.isclose(latency.group_cost(gid, w), latency.group_cost(gid, w + 8))]  # fmt: skip

    target = latency.cost.total() * 0.6
    by_latency = latency.allocate(scores, target)
    assert latency.cost.total(by_latency) <= target
    assert any(int(m.sum()) < len(m) for m in by_latency.values()) and not on_plateau(by_latency)
    assert on_plateau(flops.allocate(scores, flops.cost.total() * 0.6))  # FLOPs alone stop on any multiple of 8
    # the ladder of a plain group (one conv's outputs, read whole by one conv) is the blocks of 16
    plain = next(g.gid for g in graph.groups if g.width == 64 and len(latency.touch[g.gid]) == 2)
    assert latency.ladders[plain] == [64, 48, 32, 16]
    assert np.isclose(latency.cost.total(), latency.cost.table.dense_ms)
