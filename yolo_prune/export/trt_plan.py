"""What a TensorRT build is asked to do, worked out without TensorRT (so it is tested on every machine).

- Optimization profile of a dynamic batch: min 1, opt = max = the engine batch. The kernels are tuned at the batch the
  engine is timed and deployed at, not at batch // 2.
- INT8 calibration profile: min = opt = max = the calibration batch, which is the batch the calibrator feeds: TensorRT
  calibrates at the profile's opt shape, so any other opt would silently drop part of every calibration batch.
- The decode tail of the graph (everything after the head's last convolutions: reshapes, DFL softmax and its fixed
  1x1 conv, box arithmetic, sigmoid, the final concat of pixel boxes with 0-1 scores) stays in FP32 in INT8 engines:
  one INT8 scale for that concat would crush the scores.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import YoloPruneError

FLOAT_TYPES = (1, 10, 11, 16)  # ONNX TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def optimization_profile(batch: int, imgsz) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) input shapes of a dynamic-batch engine whose largest batch is `batch`."""
    h, w = imgsz
    return (1, 3, h, w), (batch, 3, h, w), (batch, 3, h, w)


def calibration_profile(batch: int, imgsz) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) of the INT8 calibration profile: all three the calibration batch."""
    h, w = imgsz
    shape = (batch, 3, h, w)
    return shape, shape, shape


# --------------------------------------------------------------------------------------------- the decode tail


@dataclass(frozen=True)
class Node:
    """One graph node (ONNX node or TensorRT layer), as the tail search sees it."""

    name: str
    is_conv: bool
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def decode_tail(nodes: Sequence[Node], graph_outputs: Iterable[str]) -> list[str]:
    """Names of the nodes after the head's last convolutions, in graph order.

    Walks back from the outputs and stops at a convolution whose input comes from at most one other convolution (a
    learned head conv on its own feature map). A convolution fed by several of them (the DFL's fixed 1x1 conv, after
    the scales are joined) is part of the decode and the walk goes on through it.
    """
    producer = {t: n for n in nodes for t in n.outputs}
    sources: dict[str, frozenset[str]] = {}
    tail, stack = set(), list(graph_outputs)
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in tail:
            continue
        if node.is_conv and len(_conv_sources(node.inputs[0], producer, sources)) <= 1:
            continue  # a feature conv: the tail starts after it
        tail.add(node.name)
        stack.extend(node.inputs)
    return [n.name for n in nodes if n.name in tail]


def _conv_sources(tensor: str, producer: dict, memo: dict) -> frozenset[str]:
    """The convolutions reached walking back from `tensor` through non-convolution nodes."""
    pending, found, seen = [tensor], set(), set()
    while pending:
        t = pending.pop()
        if t in memo:
            found |= memo[t]
            continue
        node = producer.get(t)
        if node is None or t in seen:
            continue
        seen.add(t)
        if node.is_conv:
            found.add(node.name)
        else:
            pending.extend(node.inputs)
    memo[tensor] = frozenset(found)
    return memo[tensor]


def onnx_nodes(model) -> list[Node]:
    """The nodes of an onnx.ModelProto as `Node`s (empty names made unique, as TensorRT's parser does)."""
    return [Node(n.name or f"{n.op_type}_{i}", n.op_type == "Conv", tuple(n.input), tuple(n.output))
            for i, n in enumerate(model.graph.node)]  # fmt: skip


def float_tensors(model) -> set[str]:
    """Names of the tensors ONNX shape inference types as floating point (shape arithmetic is int64)."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(model).graph
    typed = list(graph.value_info) + list(graph.output) + list(graph.input)
    return {v.name for v in typed if v.type.tensor_type.elem_type in FLOAT_TYPES}


def fp32_tail(onnx_file) -> dict:
    """The decode tail of an exported ONNX: {"nodes": its node names, "tensors": their outputs, "other_nodes"}.

    Only nodes whose outputs are all floating point are listed: precision applies to float math, not to the int64
    shape computations a dynamic batch adds.
    """
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    nodes = onnx_nodes(model)
    floats = float_tensors(model)
    names = set(decode_tail(nodes, [o.name for o in model.graph.output]))
    kept = [n for n in nodes if n.name in names and all(t in floats for t in n.outputs)]
    if not kept:
        raise YoloPruneError(f"'{onnx_file}' has no decode after its last convolution: is it a yolo-prune export?")
    return {"nodes": [n.name for n in kept], "tensors": [t for n in kept for t in n.outputs],
            "other_nodes": [n.name for n in nodes if n.name not in names]}


def match_layers(layers: Sequence[tuple[str, Sequence[str], bool]], tail: dict) -> list[int]:
    """Indices of the TensorRT layers that implement the tail's ONNX nodes and compute in floating point.

    `layers` are (layer name, output tensor names, all outputs float). TensorRT's ONNX parser names a node's layer
    after the node, extra layers `<node>_<n>`, and the node's last layer's outputs after the ONNX outputs.
    """
    nodes, tensors, others = set(tail["nodes"]), set(tail["tensors"]), set(tail["other_nodes"])
    picked = []
    for i, (name, outputs, is_float) in enumerate(layers):
        base = re.sub(r"_\d+$", "", name)
        from_tail = name in nodes or (base in nodes and name not in others) or any(t in tensors for t in outputs)
        if from_tail and is_float:
            picked.append(i)
    return picked


# ------------------------------------------------------------------------------------------------ batch checks


def run_batch(requested: int, shape: Sequence[int], profile: Sequence[Sequence[int]] | None, name: str) -> int:
    """The batch an engine will really run for a request: its own for a fixed batch, else the request if the
    engine's optimization profile (min, opt, max) allows it; one error otherwise."""
    if shape[0] > 0:
        if requested != shape[0]:
            raise YoloPruneError(f"'{name}' has a fixed batch of {shape[0]}; pass --batch {shape[0]}.")
        return int(shape[0])
    low, high = int(profile[0][0]), int(profile[2][0])
    if not low <= requested <= high:
        raise YoloPruneError(f"'{name}' runs batches {low} to {high}; pass a --batch in that range.")
    return requested
