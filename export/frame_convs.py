"""3D convolutions of an exported graph rewritten as 2D convolutions over frames folded into the batch.

ONNX Runtime's CPU kernels are much slower for 3D convolutions than for 2D ones: its NCHWc layout and its
depthwise kernels exist for 2D only, so X3D-S spent two thirds of its time in 3×3×3 depthwise convs (150 of
228 ms) and I3D's one-frame-deep convs ran as generic im2col. This pass gives every such conv the form
``clipwise.models.layers.FrameConv3d`` gives it in torch: the clip (N, C, T, H, W) is transposed to (N, T, C, H, W)
and seen as N·T frames, and the conv becomes

* kernel one frame deep (kt = 1, no temporal stride or padding): one 2D conv of the kernel's spatial part;
* depthwise with kt > 1 ("same" temporal padding, stride 1): the sum of kt 2D depthwise convs, the one of
  temporal offset dt reading the frames shifted by dt (zero frames padded at both ends);
* ungrouped with kt > 1 (same padding, stride 1): one 2D conv over the kt shifted frame sets stacked along
  the channels, with the weight reordered to match (a temporal im2col: the same MACs in one GEMM).

Then the result is viewed back as (N, T, C', H', W') and transposed to (N, C', T, H', W'). Each rewritten conv
is wrapped by two transposes; between two rewritten convs ONNX Runtime's transpose optimiser cancels the
pair across the elementwise nodes in between. The MACs are those of the 3D conv; results equal it up to float
rounding (the export's parity checks compare the graph with PyTorch). Convs of other shapes (temporal stride,
grouped but not depthwise with kt > 1, weights computed in the graph) and those inside clipwise functions
are left as they are.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

TO_FRAMES = [0, 2, 1, 3, 4]  # (N, C, T, H, W) <-> (N, T, C, H, W): its own inverse


class _Rewriter:
    """Makes the nodes and initializers that replace the convs of one graph, with fresh names."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.count = 0
        self.nodes: list[onnx.NodeProto] = []

    def name(self, stem: str) -> str:
        self.count += 1
        return f"frame_convs/{stem}_{self.count}"

    def constant(self, stem: str, array: np.ndarray) -> str:
        name = self.name(stem)
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op_type: str, inputs: list[str], **attributes) -> str:
        output = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attributes))
        return output

    def rewrite(self, conv: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        """The nodes replacing ``conv``, or None where it keeps its form."""
        weight = self.initializers.get(conv.input[1])
        bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
        if weight is None or len(weight.dims) != 5:
            return None
        w = numpy_helper.to_array(weight)
        out_channels, group_width, depth = w.shape[:3]
        attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in conv.attribute}
        groups = attributes.get("group", 1)
        strides = list(attributes.get("strides", [1, 1, 1]))
        pads = list(attributes.get("pads", [0] * 6))
        dilations = list(attributes.get("dilations", [1, 1, 1]))
        same_in_time = pads[0] == pads[3] == depth // 2 and depth % 2 == 1
        depthwise = group_width == 1 and groups == out_channels
        if attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or strides[0] != 1 or dilations[0] != 1:
            return None
        if not (depth == 1 and pads[0] == pads[3] == 0) and not (same_in_time and (depthwise or groups == 1)):
            return None
        self.nodes = []
        spatial = {
            "strides": strides[1:],
            "pads": [pads[1], pads[2], pads[4], pads[5]],
            "dilations": dilations[1:],
            "group": groups,
        }
        x, y = conv.input[0], conv.output[0]
        shape = self.node("Shape", [x])
        clips_frames = self.node(
            "Slice", [shape, self.constant("at", np.array([0])), self.constant("to", np.array([1]))]
        )
        frames = self.node("Slice", [shape, self.constant("at", np.array([2])), self.constant("to", np.array([3]))])
        channels_size = self.node(
            "Slice", [shape, self.constant("at", np.array([1])), self.constant("to", np.array([5]))]
        )
        # (N, T, C, H, W) from the clip, then the frame sets the kernel's temporal offsets read, padded at both ends
        per_frame = self.node("Transpose", [x], perm=TO_FRAMES)
        if depth > 1:
            margin = depth // 2
            pad_widths = np.array([0, margin, 0, 0, 0, 0, margin, 0, 0, 0])
            per_frame = self.node("Pad", [per_frame, self.constant("pads", pad_widths)])
        fold_shape = self.node(
            "Concat",
            [
                self.constant("minus_one", np.array([-1])),
                self.node("Gather", [channels_size, self.constant("chw", np.array([0, 2, 3]))]),
            ],
            axis=0,
        )
        shifted = []
        for offset in range(depth):
            if depth == 1:
                frames_at = per_frame
            else:
                end = self.node("Add", [frames, self.constant("offset", np.array([offset]))])
                frames_at = self.node(
                    "Slice",
                    [per_frame, self.constant("start", np.array([offset])), end, self.constant("axis", np.array([1]))],
                )
            shifted.append(self.node("Reshape", [frames_at, fold_shape]))
        bias_inputs = [bias] if bias else []
        if depth == 1 or groups == 1:
            # one 2D conv: stacked shifts along the channels, weight (C', kt·C, kh, kw) in the same order
            stacked = shifted[0] if depth == 1 else self.node("Concat", shifted, axis=1)
            weight_2d = w.transpose(0, 2, 1, 3, 4).reshape(out_channels, depth * group_width, *w.shape[3:])
            out = self.node(
                "Conv", [stacked, self.constant("weight", np.ascontiguousarray(weight_2d)), *bias_inputs], **spatial
            )
        else:
            # depthwise: one 2D depthwise conv per temporal offset, summed
            terms = [
                self.node(
                    "Conv",
                    [
                        frames_at,
                        self.constant("weight", np.ascontiguousarray(w[:, :, offset])),
                        *(bias_inputs if offset == 0 else []),
                    ],
                    **spatial,
                )
                for offset, frames_at in enumerate(shifted)
            ]
            out = terms[0]
            for term in terms[1:]:
                out = self.node("Add", [out, term])
        out_shape = self.node("Shape", [out])
        unfold_shape = self.node(
            "Concat",
            [
                clips_frames,
                frames,
                self.node("Slice", [out_shape, self.constant("at", np.array([1])), self.constant("to", np.array([4]))]),
            ],
            axis=0,
        )
        per_frame_out = self.node("Reshape", [out, unfold_shape])
        self.nodes.append(
            helper.make_node("Transpose", [per_frame_out], [y], name=self.name("transpose"), perm=TO_FRAMES)
        )
        return self.nodes


def fold_frame_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite, in place, the 3D convs of ``model``'s main graph as 2D convs over frames (module docstring);
    returns ``model``."""
    graph = model.graph
    rewriter = _Rewriter(graph)
    nodes: list[onnx.NodeProto] = []
    replaced = set()
    for node in graph.node:
        replacement = rewriter.rewrite(node) if node.op_type == "Conv" and node.domain == "" else None
        if replacement is None:
            nodes.append(node)
        else:
            nodes.extend(replacement)
            replaced.add(node.input[1])
    del graph.node[:]
    graph.node.extend(nodes)
    still_used = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name not in replaced or tensor.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model
