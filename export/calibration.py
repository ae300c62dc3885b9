"""Union thresholds of an exported graph of gated pairs, calibrated with ONNX Runtime on the machine that serves it.

Each ``clipwise::GatedConvPair`` node runs a convolution over the union of the channels its frames need when
that union holds fewer than its threshold of the channels, and every channel (constant weights, prepacked by
ONNX Runtime) otherwise. Where the two cost the same depends on the layer and the machine: gathered weights
lose ONNX Runtime's prepacked kernels, and how much that costs varies with the shapes. So when a version loads,
each node's two convolutions are timed as small graphs of their own at the block's input shape — dense, and
gathered to a quarter and three quarters of the channels (the union branch as the node runs it: weight gather,
convolution, and for conv1 the spread back to full width) — and each threshold is set where the gathered
line crosses the dense time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from clipwise.export.ops import DOMAIN, ONNX_OPSET, UNION_ATTRIBUTES
from clipwise.models.base import VideoClassifier
from clipwise.models.folding import conv_output_size

SHARES = (0.25, 0.75)
REPEATS = 5
IR_VERSION = 8  # what this onnxruntime reads


@dataclass(frozen=True)
class ConvShape:
    """One convolution of a gated pair at its input: frames, channels in and out, spatial size, geometry."""

    frames: int
    in_channels: int
    out_channels: int
    size: tuple[int, int]
    kernel: int
    stride: int
    padding: int

    def conv(self, x: str, weight: str, bias: str, out: str) -> onnx.NodeProto:
        pads = [self.padding] * 4
        return helper.make_node("Conv", [x, weight, bias], [out], strides=[self.stride] * 2, pads=pads)


def gated_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The ``GatedConvPair`` nodes of a graph, in execution order (the gated blocks' order)."""
    return [node for node in model.graph.node if node.domain == DOMAIN and node.op_type == "GatedConvPair"]


def union_thresholds(model: onnx.ModelProto) -> list[tuple[float, float]]:
    """Per ``GatedConvPair`` node, its (conv1, conv2) union thresholds."""
    thresholds = []
    for node in gated_nodes(model):
        values = {attribute.name: attribute.f for attribute in node.attribute if attribute.name in UNION_ATTRIBUTES}
        thresholds.append((values[UNION_ATTRIBUTES[0]], values[UNION_ATTRIBUTES[1]]))
    return thresholds


def set_union_thresholds(model: onnx.ModelProto, thresholds: Sequence[tuple[float, float]]) -> None:
    for node, pair in zip(gated_nodes(model), thresholds, strict=True):
        for attribute in node.attribute:
            if attribute.name in UNION_ATTRIBUTES:
                attribute.f = pair[UNION_ATTRIBUTES.index(attribute.name)]


def conv_shapes(model: VideoClassifier, frames: int, size: int) -> list[tuple[ConvShape, ConvShape]]:
    """conv1's and conv2's shapes of every gated block for one clip of ``frames`` × ``size``²."""
    shapes = []
    for block, cost in zip(model.gated_blocks(), model.block_costs(frames, size), strict=True):
        conv1, conv2 = block.conv1, block.conv2
        size1 = conv_output_size(conv1, cost.input_size)
        shapes.append(
            (
                ConvShape(
                    frames,
                    conv1.in_channels,
                    conv1.out_channels,
                    cost.input_size,
                    conv1.kernel_size[0],
                    conv1.stride[0],
                    conv1.padding[0],
                ),  # fmt: skip
                ConvShape(
                    frames,
                    conv2.in_channels,
                    conv2.out_channels,
                    size1,
                    conv2.kernel_size[0],
                    conv2.stride[0],
                    conv2.padding[0],
                ),  # fmt: skip
            )
        )
    return shapes


def _graph(shape: ConvShape, channels: int | None, gated_output: bool) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One convolution as the node runs it: dense (``channels`` None) or over ``channels`` of its gated side
    (conv1: output channels, spread back to full width; conv2: input channels)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((shape.out_channels, shape.in_channels, shape.kernel, shape.kernel), np.float32)
    bias = rng.standard_normal(shape.out_channels, np.float32)
    initializers = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [shape.frames, shape.in_channels, *shape.size])]
    feed = {"x": rng.standard_normal((shape.frames, shape.in_channels, *shape.size), np.float32)}
    if channels is None:
        nodes = [shape.conv("x", "w", "b", "y")]
    else:
        gated = shape.out_channels if gated_output else shape.in_channels
        feed["index"] = np.sort(rng.permutation(gated)[:channels]).astype(np.int64)
        inputs.append(helper.make_tensor_value_info("index", TensorProto.INT64, [None]))
        if gated_output:
            position = np.full(gated, channels, np.int64)
            position[feed["index"]] = np.arange(channels)
            initializers += [numpy_helper.from_array(position, "position")]
            nodes = [
                helper.make_node("Gather", ["w", "index"], ["wg"], axis=0),
                helper.make_node("Gather", ["b", "index"], ["bg"], axis=0),
                shape.conv("x", "wg", "bg", "compact"),
                helper.make_node("Slice", ["compact", "zero", "one", "axis"], ["pad"]),
                helper.make_node("Concat", ["compact", "pad"], ["padded"], axis=1),
                helper.make_node("Gather", ["padded", "position"], ["y"], axis=1),
            ]
            initializers += [
                numpy_helper.from_array(np.array([0], np.int64), "zero"),
                numpy_helper.from_array(np.array([1], np.int64), "one"),
                numpy_helper.from_array(np.array([1], np.int64), "axis"),
            ]
        else:
            nodes = [
                helper.make_node("Gather", ["x", "index"], ["xg"], axis=1),
                helper.make_node("Gather", ["w", "index"], ["wg"], axis=1),
                shape.conv("xg", "wg", "b", "y"),
            ]
    graph = helper.make_graph(nodes, "conv", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    graph.initializer.extend(initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=IR_VERSION)
    return model, feed


CPU_PROVIDERS = ("CPUExecutionProvider",)


def _milliseconds(model: onnx.ModelProto, feed: dict[str, np.ndarray], options, providers: Sequence) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=list(providers))
    session.run(None, feed)
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def threshold(shape: ConvShape, gated_output: bool, options, providers: Sequence = CPU_PROVIDERS) -> float:
    """The share of the gated channels below which the union computation is faster than the dense one."""
    gated = shape.out_channels if gated_output else shape.in_channels
    dense = _milliseconds(*_graph(shape, None, gated_output), options, providers)
    counts = [max(1, round(share * gated)) for share in SHARES]
    times = [_milliseconds(*_graph(shape, count, gated_output), options, providers) for count in counts]
    slope = (times[1] - times[0]) / (counts[1] - counts[0])
    if slope <= 0:  # noise, or a cost flat in the channels: union pays wherever it paid at the larger share
        return 1.0 if times[1] < dense else 0.0
    crossing = counts[0] + (dense - times[0]) / slope
    return float(np.clip(crossing / gated, 0.0, 1.0))


def calibrate_thresholds(
    model: VideoClassifier, frames: int, size: int, options, providers: Sequence = CPU_PROVIDERS
) -> list[tuple[float, float]]:
    """Per gated block, the (conv1, conv2) union thresholds measured with ``options`` (an onnxruntime
    ``SessionOptions``, the serving session's threads) on ``providers`` (the serving session's device)."""
    return [
        (threshold(conv1, True, options, providers), threshold(conv2, False, options, providers))
        for conv1, conv2 in conv_shapes(model, frames, size)
    ]
