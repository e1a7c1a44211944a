"""The latency table: site graphs against torch, the fit on known cost functions, the staircase, the checks."""

import copy
import json

import numpy as np
import pytest
import torch

from yolo_prune.errors import YoloPruneError
from yolo_prune.latency.lut import LatencyTable, SiteCurve, fit_offset, monotone, stair_widths
from yolo_prune.latency.sitegraph import check_spec, out_hw, site_graph

SPEC = {"name": "model.3.conv", "call": 0, "cin": 32, "cout": 48, "kernel": [3, 3], "stride": [2, 2], "pad": [1, 1],
        "dilation": [1, 1], "depthwise": False, "in_hw": [20, 18], "act": {"op": "silu"}}  # fmt: skip


@pytest.mark.parametrize("act, module", [({"op": "silu"}, torch.nn.SiLU()), ({"op": "identity"}, torch.nn.Identity()),
                                         ({"op": "leaky_relu", "alpha": 0.1}, torch.nn.LeakyReLU(0.1)),
                                         ({"op": "relu"}, torch.nn.ReLU())])  # fmt: skip
@pytest.mark.parametrize("depthwise", [False, True])
def test_site_graph_computes_the_conv_it_describes(act, module, depthwise):
    import onnxruntime as ort
    from onnx import numpy_helper

    spec = {**SPEC, "act": act, "depthwise": depthwise}
    cin, cout = (24, 24) if depthwise else (24, 40)
    proto = site_graph(spec, cin, cout, batch=2)
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in proto.graph.initializer}
    x = np.random.default_rng(1).standard_normal((2, cin, *spec["in_hw"])).astype(np.float32)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = module(torch.nn.functional.conv2d(torch.from_numpy(x), weights["w"], weights["b"], stride=2, padding=1,
                                            groups=cin if depthwise else 1))  # fmt: skip
    assert got.shape == (2, cout, *out_hw(spec)) == tuple(ref.shape)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-5)


def test_spec_checks_name_the_field():
    with pytest.raises(ValueError, match="'stride' must be two integers"):
        check_spec({**SPEC, "stride": [2]})
    with pytest.raises(ValueError, match="'act' must be"):
        check_spec({**SPEC, "act": {"op": "__import__('os')"}})


def test_axis_curve_is_monotone_and_ends_at_full_width():
    assert monotone([1, 2, 3], 3).tolist() == [1, 2, 3]
    assert monotone([1, 5, 2, 4], 3).tolist() == [1, 2, 2, 3]  # a stalled (slow) run does not lift its neighbours


def synthetic_site(t0, f, g, cin=64, cout=96, step=8):
    """A site whose time is t0 + f(cout) g(cin), measured exactly on the profile's points."""
    cin_w, cout_w = list(range(step, cin + 1, step)), list(range(step, cout + 1, step))
    t = lambda a, b: t0 + f(b) * g(a)  # noqa: E731
    return {**SPEC, "cin": cin, "cout": cout, "cin_widths": cin_w, "cout_widths": cout_w, "ms_full": t(cin, cout),
            "ms_cout": [t(cin, w) for w in cout_w], "ms_cin": [t(w, cout) for w in cin_w],
            "diagonal": [[16, 24, t(16, 24)], [32, 48, t(32, 48)], [48, 72, t(48, 72)]]}, t  # fmt: skip


def test_fit_recovers_a_separable_cost_with_an_offset_and_stairs():
    stair = lambda w: np.ceil(w / 16) * 16  # noqa: E731  (a kernel that pads channels to 16)
    entry, truth = synthetic_site(0.05, lambda c: 0.002 * stair(c), lambda c: 0.01 * c + 0.1)
    curve = SiteCurve(entry)
    assert curve.t0 == pytest.approx(0.05, rel=1e-6)
    for cin, cout in [(8, 8), (24, 40), (64, 16), (40, 96)]:
        assert curve(cin, cout) == pytest.approx(truth(cin, cout), rel=1e-9)
    # without the fitted offset the prediction would be off where both sides are cut
    assert fit_offset(entry["ms_full"], []) == 0.0


def test_staircase_keeps_the_widest_width_of_each_plateau():
    widths = [8, 16, 24, 32, 40, 48]
    ms = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]  # 16-channel blocks: 8 costs as 16, 24 as 32 ...
    assert stair_widths(widths, ms) == [16, 32, 48]
    assert stair_widths(widths, [1, 2, 3, 4, 5, 6]) == widths  # a linear cost drops at every width
    assert stair_widths(widths, [1.0, 1.02, 0.99, 2.0, 2.01, 1.98]) == [24, 48]  # noise within a plateau is no step


def table_for(sites, dense=10.0):
    return {"format": "yolo-prune-latency", "version": 1, "backend": "onnxruntime", "precision": "fp32",
            "device": "test", "imgsz": [64, 64], "batch": 1, "step": 8, "dense_ms": dense, "sites": sites}  # fmt: skip


def test_model_fit_from_dense_and_probe():
    entry, truth = synthetic_site(0.0, lambda c: 0.01 * c, lambda c: 0.01 * c)
    data = table_for([entry, entry], dense=2 + 3 * 2 * truth(64, 96))  # fixed 2 ms, sites 3x slower in the model
    data["probe"] = {"ms": 2 + 3 * 2 * truth(32, 48), "dense_ms": data["dense_ms"], "sites": [[32, 48], [32, 48]]}
    table = LatencyTable(data)
    assert table.scale == pytest.approx(3) and table.fixed_ms == pytest.approx(2)
    assert table.predict([(16, 24), (64, 96)]) == pytest.approx(2 + 3 * (truth(16, 24) + truth(64, 96)))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="pickle"), "'format' must be"),
    (lambda d: d["sites"][0].update(ms_cout=[1.0]), "must be lists of one length"),
    (lambda d: d["sites"][0].update(cout_widths=list(reversed(d["sites"][0]["cout_widths"]))), "must rise to"),
    (lambda d: d["sites"][0].update(ms_full=float("nan")), "'ms_full' must be a positive time"),
    (lambda d: d.update(dense_ms="fast"), "'dense_ms'"),
    (lambda d: d.update(probe={"ms": 1.0}), "'probe' must hold"),
])  # fmt: skip
def test_bad_tables_get_one_clear_error(tmp_path, change, message):
    data = table_for([synthetic_site(0.0, lambda c: 0.01 * c, lambda c: 0.01 * c)[0]])
    change(data)
    path = tmp_path / "lut.json"
    path.write_text(json.dumps(data))
    with pytest.raises(YoloPruneError, match=message):
        LatencyTable.load(path)


def test_unreadable_or_missing_table(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(YoloPruneError, match="not readable JSON"):
        LatencyTable.load(tmp_path / "bad.json")
    with pytest.raises(YoloPruneError, match="does not exist"):
        LatencyTable.load(tmp_path / "none.json")


def test_table_must_fit_the_model():
    entry = synthetic_site(0.0, lambda c: 0.01 * c, lambda c: 0.01 * c)[0]
    table = LatencyTable(table_for([entry]))
    table.check_for([entry], [64, 64], 1, "onnxruntime")
    with pytest.raises(YoloPruneError, match="imgsz"):
        table.check_for([entry], [128, 128], 1)
    with pytest.raises(YoloPruneError, match="measured on onnxruntime, not tensorrt"):
        table.check_for([entry], [64, 64], 1, "tensorrt")
    with pytest.raises(YoloPruneError, match="differs in cout"):
        table.check_for([{**copy.deepcopy(entry), "cout": 80}], [64, 64], 1)
