"""Profiling for real on ONNX Runtime (a small model at a small size), and latency-targeted pruning from the table.

The prediction check times the dense and the pruned models interleaved in one run (as `yolo-prune bench` does) and
compares the measured latency cut with the one the table predicts: within 0.12, where a predictor blind to widths
would be off by the whole cut (0.3). The figures at deployment sizes come from tools/latency_prediction.py
(docs/results.md).
"""

import json

import pytest

from yolo_prune.errors import YoloPruneError

IMGSZ, STEP = 160, 16


@pytest.fixture(scope="module")
def lut(tmp_path_factory):
    from yolo_prune.api import profile

    out = tmp_path_factory.mktemp("lut") / "lut.json"
    profile("yolov8n.yaml", imgsz=IMGSZ, step=STEP, runs=3, out=out)
    return out


def test_table_covers_every_site_and_fits_the_model(lut):
    from yolo_prune.graph.analyze import analyze
    from yolo_prune.latency.lut import LatencyTable
    from yolo_prune.latency.plan import plan_table
    from yolo_prune.nn.build import load_model

    model = load_model("yolov8n.yaml")
    graph = analyze(model, IMGSZ)
    table = LatencyTable.load(lut)
    table.check_for(plan_table(model, graph, (IMGSZ, IMGSZ), 1, STEP)["sites"], (IMGSZ, IMGSZ), 1, "onnxruntime")
    data = json.loads(lut.read_text())
    assert len(data["sites"]) == len(graph.sites) and data["probe"]["ms"] < data["dense_ms"]
    assert table.predict([(s["cin"], s["cout"]) for s in data["sites"]]) == pytest.approx(table.dense_ms, rel=0.02)
    with pytest.raises(YoloPruneError, match="imgsz"):  # the same table cannot stand in for another size
        table.check_for(plan_table(model, analyze(model, 128), (128, 128), 1, STEP)["sites"], (128, 128), 1)


def test_flops_and_latency_are_exclusive_and_the_lut_must_fit(lut, tmp_path):
    from yolo_prune.cli import main

    assert main(["prune", "--model", "yolov8n.yaml", "--flops", "0.3", "--latency", "0.3", "--out",
                 str(tmp_path / "a.pt")]) == 2  # fmt: skip
    with pytest.raises(YoloPruneError, match="imgsz"):
        from yolo_prune.api import prune

        prune("yolov8n.yaml", latency=0.3, imgsz=128, lut=lut, out=tmp_path / "b.pt")
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()


def test_flops_budget_unchanged_by_the_cost_model():
    """The default cost model is FLOPs, on the same ladder as before: explicit FlopsCost gives identical masks."""
    import numpy as np

    from yolo_prune.graph.analyze import analyze
    from yolo_prune.masks.budget import Budget, FlopsCost
    from yolo_prune.methods.criteria import folded_l1
    from yolo_prune.nn.build import load_model

    model = load_model("yolov8n.yaml")
    graph = analyze(model, 64)
    scores = folded_l1(model, graph)
    a = Budget(graph).allocate(scores, graph.gflops() * 0.6)
    b = Budget(graph, cost=FlopsCost(graph)).allocate(scores, graph.gflops() * 0.6)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert all(int(m.sum()) % 8 == 0 or int(m.sum()) == len(m) for m in a.values())


def test_predicted_cut_is_the_measured_one(lut, tmp_path):
    import numpy as np

    from yolo_prune.api import prune
    from yolo_prune.bench import benchmark
    from yolo_prune.graph.analyze import analyze
    from yolo_prune.latency.cost import LatencyCost
    from yolo_prune.latency.lut import LatencyTable
    from yolo_prune.nn.build import load_model

    out = tmp_path / "latency.pt"
    prune("yolov8n.yaml", latency=0.3, imgsz=IMGSZ, lut=lut, out=out)
    cost = LatencyCost(analyze(load_model("yolov8n.yaml"), IMGSZ), LatencyTable.load(lut))
    slim = {g.name: g.width for g in analyze(load_model(out), IMGSZ).groups}
    masks = {g.name: np.arange(g.width) < slim[g.name] for g in cost.graph.groups}
    predicted = 1 - cost.total(masks) / cost.total()
    assert predicted == pytest.approx(0.3, abs=0.01)
    rows = benchmark(["yolov8n.yaml", str(out)], imgsz=IMGSZ, warmup=10, runs=60)["models"]
    measured = 1 - rows[1]["latency"]["median_ms"] / rows[0]["latency"]["median_ms"]
    assert abs(measured - predicted) < 0.12, (measured, predicted)
