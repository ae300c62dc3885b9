"""Run a graph traced on one clip over a batch of clips, in an ONNX ``Loop``.

A clip-plan model (Ada3D) gives each clip its own frames and stages, so the clips of a batch have different
shapes inside the network and cannot share one pass. ``loop_over_clips`` turns a graph with input ``clip`` (1, ...) and
outputs (1, ...) into one with input ``clips`` (N, ...) whose Loop body takes clip i, runs the traced
nodes and stacks their outputs: (N, ...). The weights stay initializers of the main graph, which the body
reads from the enclosing scope.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

BATCH = "batch"


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [dim.dim_value or dim.dim_param for dim in value.type.tensor_type.shape.dim]


def _unsized(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """``value`` with its element type only (a Loop body's outputs)."""
    return helper.make_tensor_value_info(value.name, value.type.tensor_type.elem_type, None)


def _batched(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    """``value`` of one clip, (1, ...), as ``name`` of a batch: (batch, ...)."""
    return helper.make_tensor_value_info(name, value.type.tensor_type.elem_type, [BATCH, *_dims(value)[1:]])


def loop_over_clips(model: onnx.ModelProto, clips_name: str, output_names: list[str]) -> onnx.ModelProto:
    """The batched form of a one-clip ``model``: input ``clips_name`` (batch, ...), outputs ``output_names``
    (batch, ...) in the order of the model's outputs."""
    traced = model.graph
    (clip_input,) = traced.input
    body = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["clip_index", "axis_zero"], ["clip_index_1d"]),
            helper.make_node("Gather", [clips_name, "clip_index_1d"], [clip_input.name], axis=0),
            *traced.node,
            helper.make_node("Identity", ["loop_condition"], ["loop_condition_out"]),
        ],
        "one_clip",
        [
            helper.make_tensor_value_info("clip_index", TensorProto.INT64, []),
            helper.make_tensor_value_info("loop_condition", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("loop_condition_out", TensorProto.BOOL, []),
            *(_unsized(output) for output in traced.output),
        ],
    )
    stacked = [f"{name}_stacked" for name in output_names]
    nodes = [
        helper.make_node("Shape", [clips_name], ["batch_size_1d"], start=0, end=1),
        helper.make_node("Squeeze", ["batch_size_1d"], ["batch_size"]),
        helper.make_node("Loop", ["batch_size", "loop_true"], stacked, body=body),
        *(
            helper.make_node("Squeeze", [name, "axis_one"], [output])
            for name, output in zip(stacked, output_names, strict=True)
        ),
    ]
    constants = [
        helper.make_tensor("axis_zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("axis_one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("loop_true", TensorProto.BOOL, [], [True]),
    ]
    batched = helper.make_graph(
        nodes,
        traced.name,
        [_batched(clip_input, clips_name)],
        [_batched(output, name) for output, name in zip(traced.output, output_names, strict=True)],
        initializer=[*traced.initializer, *constants],
    )
    result = helper.make_model(batched, opset_imports=model.opset_import, functions=model.functions)
    result.ir_version = model.ir_version
    result.producer_name, result.producer_version = model.producer_name, model.producer_version
    return result
