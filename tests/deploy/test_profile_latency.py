"""The kit's latency profiler: the same site graphs as yolo-prune, a table yolo-prune reads and prunes to.

TensorRT is absent here, so the kit runs its ONNX Runtime path for real on a plan written by `yolo-prune profile
--plan`; the TensorRT build and timing (build_engine.py with a timing cache and INT8 timing ranges, runtimes.TrtEngine)
skip with the reason.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMGSZ = 64


def test_kit_site_graphs_are_yolo_prunes(kit_dir):
    assert (kit_dir / "sitegraph.py").read_text() == (ROOT / "yolo_prune" / "latency" / "sitegraph.py").read_text()


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    from yolo_prune.api import profile

    folder = tmp_path_factory.mktemp("plan")
    profile("yolov8n.yaml", imgsz=IMGSZ, step=32, plan=folder)
    return folder


def run_kit(kit_dir, *args):
    return subprocess.run([sys.executable, str(kit_dir / "profile_latency.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=kit_dir)  # fmt: skip


def test_kit_measures_a_table_yolo_prune_prunes_to(kit_dir, plan, tmp_path):
    from yolo_prune.api import prune
    from yolo_prune.latency.lut import LatencyTable

    assert sorted(p.name for p in plan.iterdir()) == ["dense.onnx", "plan.json", "probe.onnx"]
    out = tmp_path / "lut.json"
    done = run_kit(kit_dir, "--plan", plan, "--runtime", "onnxruntime", "--warmup", 1, "--runs", 2, "--model-runs", 3,
                   "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["backend"] == "onnxruntime" and data["precision"] == "fp32" and "kit check" in data["device"]
    table = LatencyTable.load(out)
    assert table.dense_ms > 0 and len(table.curves) == len(json.loads((plan / "plan.json").read_text())["sites"])
    report = prune("yolov8n.yaml", latency=0.2, imgsz=IMGSZ, lut=out, out=tmp_path / "slim.pt")
    assert report["predicted_ms"] <= 0.8 * report["base_ms"] + 1e-9


def test_kit_refuses_a_bad_plan(kit_dir, plan, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "plan.json").write_text(json.dumps({"format": "yolo-prune-latency", "version": 1, "sites": [{"name": 1}]}))
    done = run_kit(kit_dir, "--plan", bad, "--runtime", "onnxruntime", "--out", tmp_path / "lut.json")
    assert done.returncode != 0 and "no sites or no probe" in done.stderr and not (tmp_path / "lut.json").exists()
    done = run_kit(kit_dir, "--plan", plan, "--runtime", "onnxruntime", "--fp16", "--out", tmp_path / "lut.json")
    assert done.returncode != 0 and "TensorRT precisions" in done.stderr


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed here (needs a "
                    "CUDA GPU); the kit's TensorRT profiling runs on the device")  # fmt: skip
def test_kit_profiles_with_tensorrt_fp16_and_int8(kit_dir, plan, tmp_path):
    from yolo_prune.latency.lut import LatencyTable

    for precision in ("--fp16", "--int8"):
        out = tmp_path / f"lut{precision}.json"
        done = run_kit(kit_dir, "--plan", plan, precision, "--runs", 3, "--model-runs", 5, "--out", out)
        assert done.returncode == 0, done.stderr
        assert LatencyTable.load(out).data["precision"] == precision[2:]


def test_kit_onnxruntime_sessions_do_not_spin(runtimes, tmp_path):
    """As in yolo-prune's runner: sessions timed in turn must not leave threads busy-waiting on the cores."""
    from onnx import TensorProto, helper, save

    shape = [1, 3, 8, 8]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(tmp_path / "id.onnx"))
    options = runtimes.OnnxModel(str(tmp_path / "id.onnx")).session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
