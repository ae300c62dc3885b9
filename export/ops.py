"""The ``clipwise`` ONNX domain: the adaptive families' gated operators as ONNX functions of standard ops.

Each operator is an ONNX function (written in onnxscript) stored in the model next to the graph that calls
it. ONNX Runtime inlines the function body and runs it as it is; another runtime can bind its own kernel to
the operator name instead (a TensorRT plugin, a GPU kernel). The bodies compute only what the policy keeps:
weights are gathered by data-dependent indices (``NonZero`` → ``Gather``) and only the gathered channels go
through ``Conv``; nothing is computed densely and masked afterwards.

* ``GatedConvPair(x, codes, w1, b1, w2, b2)`` — AdaFuse's conv1 → keep / reuse / skip → conv2 of a
  residual block (``models.adafuse.gated_conv_pair``). ``x``: (N·T, C_in, H, W) frames, clip-major;
  ``codes``: (N, T, C) int64 decisions per conv1 output channel (0 keep, 1 reuse, 2 skip; no reuse at a
  clip's first frame); ``w1``, ``b1`` and ``w2``, ``b2``: the two convolutions with their inference batch
  norms folded in; a ReLU follows conv1. One ``Scan`` step per frame: conv1 computes only the channels kept
  at t or reused at t+1 (gathered weight rows) and scatters them into the full-width map carried to the
  next step; conv2 reads the kept channels of this frame and the reused ones of the frame before, nothing
  else (gathered weight columns); a frame with nothing to compute runs no convolution (``If``). Output:
  conv2's (N·T, C_out, H', W').
* ``SelectFrames(clip, keep)`` — Ada3D's frame selection: the frames of a (1, 3, T, H, W) clip flagged in
  the (1, T) boolean ``keep``, along the time axis.
* ``SwitchableConv3d(x, weight, temporal)`` — a bias-free 3D convolution of an Ada3D stage: its whole
  kt×k×k kernel when the boolean scalar ``temporal`` is true, else only the centre temporal slice as a
  1×k×k convolution (``models.resnet3d.centre_slice_conv3d``), chosen by ``If``.

The torch side (``gated_conv_pair``, ``select_frames``, ``switchable_conv3d``) computes the same result in
eager mode and, while ``torch.onnx.export`` traces, leaves one node of the operator in the graph (an
``autograd.Function`` with a ``symbolic``); ``attach_functions`` then stores the bodies of the operators a
model uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import onnx
import torch
import torch.nn.functional as F
from onnxscript import BOOL, graph, script
from onnxscript import opset18 as op
from onnxscript.values import Opset
from torch import nn

from models.adafuse import DECISIONS, KEEP, REUSE, fuse_masked
from models.folding import FoldedConv

DOMAIN = "clipwise"
DOMAIN_VERSION = 1
ONNX_OPSET = 18  # the functions' standard opset; a model using them must import the same
CLIPWISE = Opset(DOMAIN, DOMAIN_VERSION)


# --- ONNX functions ----------------------------------------------------------------------------------------


@script(CLIPWISE, default_opset=op)
def GatedConvPair(  # noqa: N802 - ONNX operator names are CamelCase
    x,
    codes,
    w1,
    b1,
    w2,
    b2,
    conv1_strides: list[int],
    conv1_pads: list[int],
    conv2_strides: list[int],
    conv2_pads: list[int],
):
    axis_0 = op.Constant(value_ints=[0])
    axis_1 = op.Constant(value_ints=[1])
    channels = op.Shape(codes, start=2)
    frame_rows = op.Concat(op.Constant(value_ints=[-1]), channels, axis=0)
    keep = op.Equal(codes, op.Constant(value_int=KEEP))
    reuse = op.Equal(codes, op.Constant(value_int=REUSE))
    reused_next = op.Pad(
        op.Slice(reuse, axis_1, op.Constant(value_ints=[2**62]), axis_1), op.Constant(value_ints=[0, 0, 0, 0, 1, 0])
    )
    needed = op.Reshape(op.Or(keep, reused_next), frame_rows)

    # Output sizes, (in + pad_begin + pad_end - kernel) // stride + 1: a frame with nothing to compute skips its
    # convolution (ONNX Runtime's CPU Conv does not return on zero channels) and gives zeros, or conv2's bias.
    pads1, pads2 = op.Constant(value_ints=conv1_pads), op.Constant(value_ints=conv2_pads)
    extent1 = op.Sub(
        op.Add(op.Shape(x, start=2), op.Add(op.Slice(pads1, [0], [2]), op.Slice(pads1, [2], [4]))),
        op.Shape(w1, start=2),
    )
    size1 = op.Add(op.Div(extent1, op.Constant(value_ints=conv1_strides)), op.Constant(value_ints=[1]))
    extent2 = op.Sub(op.Add(size1, op.Add(op.Slice(pads2, [0], [2]), op.Slice(pads2, [2], [4]))), op.Shape(w2, start=2))
    size2 = op.Add(op.Div(extent2, op.Constant(value_ints=conv2_strides)), op.Constant(value_ints=[1]))
    conv1_zeros = op.Expand(op.CastLike(op.Constant(value_float=0.0), x), op.Concat(channels, size1, axis=0))
    bias_map = op.Unsqueeze(b2, op.Constant(value_ints=[1, 2]))
    conv2_bias = op.Expand(bias_map, op.Concat(op.Shape(w2, end=1), size2, axis=0))

    @graph()
    def frame_step(previous, frame, keep_row, reuse_row, needed_row):
        # previous: conv1's output of the frame before, full width; only its channels reused here are read.
        rows = op.Squeeze(op.NonZero(needed_row), axis_0)
        if op.Greater(op.Size(rows), op.Constant(value_int=0)):
            current = op.ScatterND(
                previous,
                op.Unsqueeze(rows, axis_1),
                op.Squeeze(
                    op.Relu(
                        op.Conv(
                            op.Unsqueeze(frame, axis_0),
                            op.Gather(w1, rows, axis=0),
                            op.Gather(b1, rows, axis=0),
                            strides=conv1_strides,
                            pads=conv1_pads,
                        )
                    ),
                    axis_0,
                ),
            )
        else:
            current = op.Identity(previous)
        kept = op.Squeeze(op.NonZero(keep_row), axis_0)
        reused = op.Squeeze(op.NonZero(reuse_row), axis_0)
        columns = op.Concat(kept, reused, axis=0)
        if op.Greater(op.Size(columns), op.Constant(value_int=0)):
            out = op.Squeeze(
                op.Conv(
                    op.Unsqueeze(
                        op.Concat(op.Gather(current, kept, axis=0), op.Gather(previous, reused, axis=0), axis=0), axis_0
                    ),
                    op.Gather(w2, columns, axis=1),
                    b2,
                    strides=conv2_strides,
                    pads=conv2_pads,
                ),
                axis_0,
            )
        else:
            out = op.Identity(conv2_bias)
        return current, out

    last, out = op.Scan(
        conv1_zeros,
        x,
        op.Reshape(keep, frame_rows),
        op.Reshape(reuse, frame_rows),
        needed,
        body=frame_step,
        num_scan_inputs=4,
    )
    return out


@script(CLIPWISE, default_opset=op)
def SelectFrames(clip, keep):  # noqa: N802
    frames = op.Squeeze(op.NonZero(op.Reshape(keep, op.Constant(value_ints=[-1]))), op.Constant(value_ints=[0]))
    return op.Gather(clip, frames, axis=2)


@script(CLIPWISE, default_opset=op)
def SwitchableConv3d(x, weight, temporal: BOOL, strides: list[int], pads: list[int], sliced_pads: list[int]):  # noqa: N802
    if temporal:
        out = op.Conv(x, weight, strides=strides, pads=pads)
    else:
        time_axis = op.Constant(value_ints=[2])
        centre = op.Div(op.Shape(weight, start=2, end=3), time_axis)
        centre_slice = op.Slice(weight, centre, op.Add(centre, op.Constant(value_ints=[1])), time_axis)
        out = op.Conv(x, centre_slice, strides=strides, pads=sliced_pads)
    return out


FUNCTIONS = {function.name: function for function in (GatedConvPair, SelectFrames, SwitchableConv3d)}


def _clipwise_op_types(graph_proto: onnx.GraphProto) -> Iterator[str]:
    """Names of the clipwise operators a graph calls, its subgraphs included."""
    for node in graph_proto.node:
        if node.domain == DOMAIN:
            yield node.op_type
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _clipwise_op_types(attribute.g)
            for subgraph in attribute.graphs:
                yield from _clipwise_op_types(subgraph)


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store in ``model`` the function bodies of the clipwise operators its graph calls, and import the domain."""
    used = sorted(set(_clipwise_op_types(model.graph)))
    if not used:
        return model
    present = {function.name for function in model.functions}
    model.functions.extend(FUNCTIONS[name].to_function_proto() for name in used if name not in present)
    if all(entry.domain != DOMAIN for entry in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return model


# --- torch side: eager results, and one operator node when traced -----------------------------------------


def _onnx_pads(padding: Sequence[int]) -> list[int]:
    """ONNX ``pads`` (all begins, then all ends) of a symmetric torch ``padding``."""
    return [*padding, *padding]


def _node(g, name: str, *inputs, **attributes):
    """A clipwise node whose output keeps the rank of its first input (sizes left to shape inference)."""
    out = g.op(f"{DOMAIN}::{name}", *inputs, **attributes)
    rank = inputs[0].type().dim()
    if rank is not None:
        out.setType(inputs[0].type().with_sizes([None] * rank))
    return out


class _GatedConvPair(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, codes, w1, b1, w2, b2, conv1_strides, conv1_pads, conv2_strides, conv2_pads):
        conv1_out = F.conv2d(x, w1, b1, conv1_strides, conv1_pads[: len(conv1_pads) // 2]).relu()
        fused = fuse_masked(conv1_out, F.one_hot(codes, DECISIONS).to(x.dtype))
        return F.conv2d(fused, w2, b2, conv2_strides, conv2_pads[: len(conv2_pads) // 2])

    @staticmethod
    def symbolic(g, x, codes, w1, b1, w2, b2, conv1_strides, conv1_pads, conv2_strides, conv2_pads):
        return _node(
            g,
            "GatedConvPair",
            x,
            codes,
            w1,
            b1,
            w2,
            b2,
            conv1_strides_i=conv1_strides,
            conv1_pads_i=conv1_pads,
            conv2_strides_i=conv2_strides,
            conv2_pads_i=conv2_pads,
        )


def gated_conv_pair(
    x: torch.Tensor,
    codes: torch.Tensor | None,
    first: FoldedConv,
    second: FoldedConv,
    *,
    residual: torch.Tensor | None = None,
    relu: bool = False,
) -> torch.Tensor:
    """``models.adafuse.gated_conv_pair`` with one ``clipwise::GatedConvPair`` node for the gated part when traced
    (the residual sum and the ReLU after it stay standard nodes).

    Eagerly it computes densely (the masked reference): it exists to be traced. ``codes`` None (full compute)
    is the dense pair, traced as plain convolutions.
    """
    if codes is None:
        return second(first(x, relu=True), residual=residual, relu=relu)
    if tuple(first.dilation) != (1, 1) or tuple(second.dilation) != (1, 1):
        raise ValueError("GatedConvPair takes undilated convolutions")
    out = _GatedConvPair.apply(
        x,
        codes,
        first.weight,
        first.bias,
        second.weight,
        second.bias,
        list(first.stride),
        _onnx_pads(first.padding),
        list(second.stride),
        _onnx_pads(second.padding),
    )
    if residual is not None:
        out = out + residual
    return out.relu() if relu else out


class _SelectFrames(torch.autograd.Function):
    @staticmethod
    def forward(ctx, clip, keep):
        return clip.index_select(2, keep.reshape(-1).nonzero().flatten())

    @staticmethod
    def symbolic(g, clip, keep):
        return _node(g, "SelectFrames", clip, keep)


def select_frames(clip: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The frames of a (1, 3, T, H, W) clip flagged in the (1, T) boolean ``keep``."""
    return _SelectFrames.apply(clip, keep)


class _SwitchableConv3d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, temporal, strides, pads, sliced_pads):
        if bool(temporal):
            return F.conv3d(x, weight, None, strides, pads[:3])
        centre = weight.shape[2] // 2
        return F.conv3d(x, weight[:, :, centre : centre + 1], None, strides, sliced_pads[:3])

    @staticmethod
    def symbolic(g, x, weight, temporal, strides, pads, sliced_pads):
        attributes = {"strides_i": strides, "pads_i": pads, "sliced_pads_i": sliced_pads}
        return _node(g, "SwitchableConv3d", x, weight, temporal, **attributes)


def switchable_conv3d(x: torch.Tensor, conv: nn.Conv3d, temporal: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` when the boolean scalar ``temporal`` is true, else its centre temporal slice as a 1×k×k conv."""
    if conv.bias is not None or conv.groups != 1 or conv.dilation != (1, 1, 1) or conv.stride[0] != 1:
        raise ValueError(f"SwitchableConv3d takes bias-free, ungrouped, undilated convs of temporal stride 1: {conv}")
    if conv.padding[0] != conv.kernel_size[0] // 2:
        raise ValueError(f"SwitchableConv3d needs 'same' temporal padding: {conv}")
    sliced_padding = (0, *conv.padding[1:])
    return _SwitchableConv3d.apply(
        x, conv.weight, temporal, list(conv.stride), _onnx_pads(conv.padding), _onnx_pads(sliced_padding)
    )
