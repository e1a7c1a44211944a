"""What the TensorRT build is asked to do, checked without TensorRT on real exported graphs: the decode tail kept in
FP32 for INT8, how TensorRT layer names map to it, batch checks, supported versions, and the CUDA scope's release
order."""

import ast
import gc
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest

from yolo_prune.errors import YoloPruneError
from yolo_prune.export import export_model
from yolo_prune.export.cuda import check_tensorrt_version, release
from yolo_prune.export.trt_plan import Node, decode_tail, fp32_tail, match_layers, onnx_nodes, run_batch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=[("yolov8n.yaml", False), ("yolov8n.yaml", True), ("yolov7-tiny.yaml", False)],
                ids=["v8n", "v8n-dynamic", "v7-tiny"])  # fmt: skip
def exported(request, tmp_path_factory):
    name, dynamic = request.param
    out = tmp_path_factory.mktemp("tail") / "m.onnx"
    return export_model(name, imgsz=64, batch=2, dynamic=dynamic, out=out)


def test_tail_is_the_decode_after_the_head_convs(exported):
    model = onnx.load(str(exported))
    nodes = {n.name: n for n in model.graph.node}
    tail = fp32_tail(exported)
    kept = [nodes[n] for n in tail["nodes"]]
    ops = {n.op_type for n in kept}
    assert {"Concat", "Sigmoid", "Softmax", "Mul"} <= ops and "Shape" not in ops  # float math only
    assert model.graph.output[0].name in tail["tensors"]  # the final concat of boxes and scores
    convs = [n for n in kept if n.op_type == "Conv"]
    assert len(convs) == 1 and "dfl" in convs[0].name  # the DFL's fixed 1x1 conv; no learned conv
    # the tail starts right after the head's six output convs (box and class branch of three scales)
    produced = {t: n for n in model.graph.node for t in n.output}
    sources = [produced[t] for n in kept for t in n.input if t in produced]
    boundary = {s.name for s in sources if s.op_type == "Conv" and s.name not in tail["nodes"]}
    assert len(boundary) == 6 and all(".2/Conv" in b for b in boundary)
    assert set(tail["other_nodes"]).isdisjoint(tail["nodes"])


def test_tail_inputs_come_from_the_tail_the_head_convs_or_constants(exported):
    """The tail is closed: FP32 math never reads an INT8 tensor other than the head convs' outputs."""
    model = onnx.load(str(exported))
    produced = {t: n for n in model.graph.node for t in n.output}
    names = set(decode_tail(onnx_nodes(model), [o.name for o in model.graph.output]))
    for node in model.graph.node:
        if node.name not in names:
            continue
        for t in node.input:
            source = produced.get(t)
            assert source is None or source.name in names or source.op_type in ("Conv", "Shape", "Constant", "Gather",
                                                                                   "Unsqueeze", "Concat"), (node, t)


def test_anchor_head_tail_has_no_conv(tmp_path):
    """YOLOv7's anchor-based IDetect head: the decode is sigmoid and grid arithmetic, the 1x1 head convs stay INT8."""
    onnx_file = export_model("yolov7-tiny-idetect.yaml", imgsz=64, out=tmp_path / "idetect.onnx")
    ops = {n.name: n.op_type for n in onnx.load(str(onnx_file)).graph.node}
    tail = fp32_tail(onnx_file)
    kept = [ops[n] for n in tail["nodes"]]
    assert "Conv" not in kept and "Sigmoid" in kept and tail["tensors"][-1] == "output0"


def test_slim_model_has_the_same_tail(slim_checkpoint, tmp_path):
    onnx_file = export_model(str(slim_checkpoint), imgsz=96, out=tmp_path / "slim.onnx")
    tail = fp32_tail(onnx_file)
    assert len(tail["nodes"]) >= 20 and tail["tensors"][-1] == "output0"


def test_a_graph_without_decode_is_one_error(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], [0.1] * 12)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g", [x], [y], [w])
    onnx.save(helper.make_model(graph), str(tmp_path / "conv.onnx"))
    with pytest.raises(YoloPruneError, match="no decode"):
        fp32_tail(tmp_path / "conv.onnx")


def test_decode_tail_on_a_small_graph():
    # two head convs joined, a conv after the join (decode), and a second learned conv before them
    nodes = [
        Node("c0", True, ("x", "w"), ("f",)), Node("act", False, ("f",), ("a",)),
        Node("c1", True, ("a", "w1"), ("b1",)), Node("c2", True, ("a", "w2"), ("b2",)),
        Node("cat", False, ("b1", "b2"), ("j",)), Node("dfl", True, ("j", "wd"), ("d",)),
        Node("sig", False, ("b2",), ("s",)), Node("out", False, ("d", "s"), ("y",)),
    ]  # fmt: skip
    assert decode_tail(nodes, ["y"]) == ["cat", "dfl", "sig", "out"]


def test_layer_names_map_to_the_tail_like_the_parser_names_them():
    tail = {"nodes": ["/m/Concat", "/m/Sigmoid"], "tensors": ["output0"], "other_nodes": ["/m/Concat_1", "/m/cv/Conv"]}
    layers = [
        ("/m/Concat", ["/m/Concat_output_0"], True),  # the node's layer
        ("/m/Sigmoid_7", ["/m/Sigmoid_7_out"], True),  # an extra layer of the node
        ("/m/Concat_1", ["/m/Concat_1_output_0"], True),  # a different ONNX node, not in the tail
        ("renamed", ["output0"], True),  # found by its output tensor
        ("/m/Sigmoid_8", ["shape"], False),  # integer shape math is left alone
        ("/m/cv/Conv", ["/m/cv/Conv_output_0"], True),
    ]
    assert match_layers(layers, tail) == [0, 1, 3]


def test_run_batch_is_the_engine_batch_or_one_error():
    assert run_batch(4, (4, 3, 64, 64), None, "e.engine") == 4
    with pytest.raises(YoloPruneError, match="fixed batch of 8; pass --batch 8"):
        run_batch(1, (8, 3, 64, 64), None, "e.engine")
    profile = [(1, 3, 64, 64), (8, 3, 64, 64), (8, 3, 64, 64)]
    assert run_batch(3, (-1, 3, 64, 64), profile, "d.engine") == 3
    with pytest.raises(YoloPruneError, match="batches 1 to 8"):
        run_batch(9, (-1, 3, 64, 64), profile, "d.engine")


@pytest.mark.parametrize("version, ok", [("8.4.3.1", False), ("8.5.2.2", True), ("8.6.1", True), ("10.0.1.6", True),
                                         ("10.16.1.11", True), ("11.4.0", True), ("12.0.0", False)])  # fmt: skip
def test_supported_tensorrt_versions(version, ok):
    if ok:
        check_tensorrt_version(version)
    else:
        with pytest.raises(YoloPruneError, match="not supported"):
            check_tensorrt_version(version)


def test_release_drops_objects_newest_first():
    order = []

    class Tracked:
        def __init__(self, name):
            self.name = name

        def __del__(self):
            order.append(self.name)

    scope = SimpleNamespace()
    scope.runtime, scope.engine, scope.context = Tracked("runtime"), Tracked("engine"), Tracked("context")
    release(scope)
    gc.collect()
    assert order == ["context", "engine", "runtime"] and not vars(scope)


def test_nothing_imports_pycuda_autoinit():
    """autoinit makes a second, non-primary CUDA context: the package and the kit use the primary one."""
    files = list((ROOT / "yolo_prune").rglob("*.py")) + list((ROOT / "deploy" / "jetson").glob("*.py"))
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
            assert not any("autoinit" in n for n in names), f"{file} imports pycuda.autoinit"
