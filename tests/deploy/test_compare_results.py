"""tools/compare_results.py: results files of the kit and of yolo-prune merged into the papers' table."""

import importlib.util
import json
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "compare_results.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("compare_results", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(folder: Path, name: str, obj) -> str:
    path = folder / name
    path.write_text(json.dumps(obj))
    return str(path)


def kit_result(kind, model, median, gflops, precision="fp16", coco=None):
    out = {"kind": kind, "model": model, "runtime": "8.5.2", "precision": precision, "gflops": gflops,
           "latency_ms": {"median_ms": median}}  # fmt: skip
    if coco:
        out["coco"] = {"AP50-95": coco[0], "AP50": coco[1]}
    return out


def test_table_merges_files_per_model_and_compares_with_the_base(tool, tmp_path, capsys):
    files = [
        write(tmp_path, "a.json", kit_result("jetson-detect", "base", 30.0, 13.2, coco=(0.37, 0.55))),
        write(tmp_path, "b.json", kit_result("jetson-bench", "base", 20.0, 13.2)),  # preferred latency
        write(tmp_path, "c.json", kit_result("jetson-bench", "slim", 12.5, 8.25)),
        write(tmp_path, "d.json", {"model": "runs/slim.pt", "pycocotools": {}, "mAP50-95": 0.35, "mAP50": 0.53}),
        write(tmp_path, "e.json", {"backend": "onnxruntime", "device": "cpu", "models": [
            {"model": "slim.onnx", "gflops": 8.25, "latency": {"median_ms": 99.0}}]}),  # not preferred over the kit
    ]  # fmt: skip
    rows = tool.build_table(tool.merge(files))
    base, slim = rows
    assert (base["model"], slim["model"]) == ("base", "slim")
    assert base["latency_ms"] == 20.0 and base["latency_from"] == "jetson-bench"
    assert base["map50_95"] == 0.37 and base["map_from"] == "jetson-detect"
    assert slim["latency_ms"] == 12.5 and slim["map50_95"] == 0.35 and slim["map_from"] == "yolo-prune val"
    assert slim["flops_cut"] == pytest.approx(1 - 8.25 / 13.2) and slim["speedup"] == pytest.approx(20.0 / 12.5)
    assert tool.main(files + ["--json", str(tmp_path / "table.json")]) == 0
    printed = capsys.readouterr().out
    assert "| slim | fp16 | 8.25 | 37.5% | 0.3500 | 0.5300 | 12.50 | 1.60x |" in printed
    assert json.loads((tmp_path / "table.json").read_text()) == rows


def test_sidecars_give_flops_and_a_named_base_is_used(tool, tmp_path):
    files = [
        write(tmp_path, "big.engine.json", {"format": "engine", "gflops": 20.0, "precision": "int8"}),
        write(tmp_path, "small.engine.json", {"format": "engine", "gflops": 5.0, "precision": "int8"}),
        write(tmp_path, "r.json", kit_result("jetson-bench", "small", 2.0, None, precision=None)),
        write(tmp_path, "s.json", kit_result("jetson-bench", "big", 6.0, None, precision=None)),
    ]
    rows = {r["model"]: r for r in tool.build_table(tool.merge(files), base="small")}
    assert rows["big"]["flops_cut"] == pytest.approx(-3.0) and rows["big"]["speedup"] == pytest.approx(2 / 6)
    assert rows["small"]["precision"] == "int8"


def test_unknown_files_and_bases_are_one_error(tool, tmp_path, capsys):
    bad = write(tmp_path, "x.json", {"hello": 1})
    assert tool.main([bad]) == 2
    assert "not a results file" in capsys.readouterr().err
    good = write(tmp_path, "y.json", kit_result("jetson-bench", "m", 1.0, 1.0))
    assert tool.main([good, "--base", "other"]) == 2
