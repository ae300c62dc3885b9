"""The ``clipwise`` ONNX domain: the adaptive families' gated operators as ONNX functions of standard ops.

Each operator is an ONNX function (written in onnxscript) stored in the model next to the graph that calls
it. ONNX Runtime inlines the function body and runs it as it is; another runtime can bind its own kernel to
the operator name instead (a TensorRT plugin, a GPU kernel).

* ``GatedConvPair(x, codes, w1, b1, w2, b2)`` — AdaFuse's conv1 → keep / reuse / skip → conv2 of a
  residual block (``clipwise.models.adafuse.gated_conv_pair``). ``x``: (N·T, C_in, H, W) frames, clip-major;
  ``codes``: (N, T, C) int64 decisions per conv1 output channel (0 keep, 1 reuse, 2 skip; no reuse at a
  clip's first frame); ``w1``, ``b1`` and ``w2``, ``b2``: the two convolutions with their inference batch
  norms folded in; a ReLU follows conv1. Each convolution runs one of two computations, chosen by ``If``
  on the decisions, the graph counterparts of ``clipwise.models.gating``'s ``union`` and ``dense`` partitions:
  *union* — only the channels some frame needs (conv1: kept at t or reused at t+1; conv2: kept or reused at
  t), as one convolution with weights gathered by data-dependent indices (``NonZero`` → ``Gather``), none at
  all when there are none (conv1's union widened to whole 16-channel blocks where the width is made of them,
  as the torch executor does); *dense* — every channel with the constant weights (which ONNX Runtime prepacks
  into its fast kernels), the decisions applied to the result. A convolution runs *union* when its union
  holds fewer than ``conv1_union_below`` (``conv2_union_below``) of its channels: thresholds calibrated per
  node on the serving machine (``clipwise.export.calibration``). Between the two, keep / reuse / skip fuse conv1's
  output (``Where``). Output: conv2's (N·T, C_out, H', W').
* ``SelectFrames(clip, keep)`` — Ada3D's frame selection: the frames of a (1, 3, T, H, W) clip flagged in
  the (1, T) boolean ``keep``, along the time axis.
* ``SwitchableConv3d(x, weight, temporal)`` — a bias-free 3D convolution of an Ada3D stage: its whole
  kt×k×k kernel when the boolean scalar ``temporal`` is true, else only the centre temporal slice as a
  1×k×k convolution (``clipwise.models.resnet3d.centre_slice_conv3d``), chosen by ``If``.

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
from onnxscript import BOOL, script
from onnxscript import opset18 as op
from onnxscript.values import Opset
from torch import nn

from clipwise.models.adafuse import DECISIONS, KEEP, REUSE, fuse_masked
from clipwise.models.folding import CHANNEL_BLOCK, FoldedConv
from clipwise.models.gating_partitions import PairCosts

DOMAIN = "clipwise"
DOMAIN_VERSION = 1
ONNX_OPSET = 18  # the functions' standard opset; a model using them must import the same
CLIPWISE = Opset(DOMAIN, DOMAIN_VERSION)
DEFAULT_UNION_BELOW = 0.5  # a GatedConvPair convolution runs its union below this share of its channels
UNION_ATTRIBUTES = ("conv1_union_below", "conv2_union_below")


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
    conv1_union_below: float,
    conv2_union_below: float,
    channel_block: int,
):
    axis_0 = op.Constant(value_ints=[0])
    axis_1 = op.Constant(value_ints=[1])
    one = op.Constant(value_ints=[1])
    channels = op.Shape(codes, start=2)
    frame_rows = op.Concat(op.Constant(value_ints=[-1]), channels, axis=0)
    keep = op.Equal(codes, op.Constant(value_int=KEEP))
    reuse = op.Equal(codes, op.Constant(value_int=REUSE))
    reused_next = op.Pad(
        op.Slice(reuse, axis_1, op.Constant(value_ints=[2**62]), axis_1), op.Constant(value_ints=[0, 0, 0, 0, 1, 0])
    )
    needed = op.Reshape(op.Or(keep, reused_next), frame_rows)  # (frames, C): conv1 computes these
    active = op.Reshape(op.Or(keep, reuse), frame_rows)  # (frames, C): conv2 reads these
    map_axes = op.Constant(value_ints=[2, 3])
    keep_map = op.Unsqueeze(op.Reshape(keep, frame_rows), map_axes)
    reuse_map = op.Unsqueeze(op.Reshape(reuse, frame_rows), map_axes)
    # conv1's channels any frame needs, widened to whole blocks of channel_block channels (models.gating.in_blocks);
    # conv2's inputs any frame reads, as they are.
    block = op.Unsqueeze(op.Constant(value_int=channel_block), axis_0)
    block_rows = op.Concat(op.Constant(value_ints=[-1]), block, axis=0)
    needed_any = op.Reshape(op.ReduceMax(op.Cast(needed, to=6), axis_0, keepdims=0), block_rows)  # int32 any()
    whole = op.Constant(value_ints=[-1])
    rows = op.Squeeze(
        op.NonZero(op.Reshape(op.Expand(op.ReduceMax(needed_any, axis_1, keepdims=1), op.Shape(needed_any)), whole)),
        axis_0,
    )
    columns = op.Squeeze(op.NonZero(op.ReduceMax(op.Cast(active, to=6), axis_0, keepdims=0)), axis_0)
    width = op.Cast(op.Squeeze(channels, axis_0), to=1)
    union1 = op.Less(op.Cast(op.Size(rows), to=1), op.Mul(width, op.Constant(value_float=conv1_union_below)))
    union2 = op.Less(op.Cast(op.Size(columns), to=1), op.Mul(width, op.Constant(value_float=conv2_union_below)))

    # Output sizes, (in + pad_begin + pad_end - kernel) // stride + 1: an empty channel set runs no convolution
    # (ONNX Runtime's CPU Conv does not return on zero channels) and gives zeros, or conv2's bias.
    pads1, pads2 = op.Constant(value_ints=conv1_pads), op.Constant(value_ints=conv2_pads)
    extent1 = op.Sub(
        op.Add(op.Shape(x, start=2), op.Add(op.Slice(pads1, [0], [2]), op.Slice(pads1, [2], [4]))),
        op.Shape(w1, start=2),
    )
    size1 = op.Add(op.Div(extent1, op.Constant(value_ints=conv1_strides)), one)
    extent2 = op.Sub(op.Add(size1, op.Add(op.Slice(pads2, [0], [2]), op.Slice(pads2, [2], [4]))), op.Shape(w2, start=2))
    size2 = op.Add(op.Div(extent2, op.Constant(value_ints=conv2_strides)), one)
    zero = op.CastLike(op.Constant(value_float=0.0), x)
    frames = op.Shape(x, end=1)

    # conv1: the union of the channels any frame needs (gathered weight rows), or all of them (constant weights).
    if union1:
        if op.Greater(op.Size(rows), op.Constant(value_int=0)):
            compact = op.Relu(
                op.Conv(
                    x, op.Gather(w1, rows, axis=0), op.Gather(b1, rows, axis=0), strides=conv1_strides, pads=conv1_pads
                )
            )
            # channel c of the full width reads position[c] of [compact, one zero channel]
            count = op.Size(rows)
            position = op.ScatterElements(
                op.Expand(count, channels), rows, op.Range(op.Constant(value_int=0), count, op.Constant(value_int=1))
            )
            padded = op.Concat(compact, op.Expand(zero, op.Concat(frames, one, size1, axis=0)), axis=1)
            conv1_out = op.Gather(padded, position, axis=1)
        else:
            conv1_out = op.Expand(zero, op.Concat(frames, channels, size1, axis=0))
    else:
        conv1_out = op.Relu(op.Conv(x, w1, b1, strides=conv1_strides, pads=conv1_pads))

    # keep: conv1 at this frame; reuse: at the frame before (a clip's first frame reuses nothing); skip: zero.
    before = op.Concat(
        op.Expand(zero, op.Concat(one, channels, size1, axis=0)),
        op.Slice(conv1_out, axis_0, op.Constant(value_ints=[-1]), axis_0),
        axis=0,
    )
    fused = op.Where(keep_map, conv1_out, op.Where(reuse_map, before, zero))

    # conv2: the union of the channels any frame reads (gathered weight columns), or all of them.
    if union2:
        if op.Greater(op.Size(columns), op.Constant(value_int=0)):
            out = op.Conv(
                op.Gather(fused, columns, axis=1),
                op.Gather(w2, columns, axis=1),
                b2,
                strides=conv2_strides,
                pads=conv2_pads,
            )
        else:
            bias_map = op.Unsqueeze(b2, op.Constant(value_ints=[0, 2, 3]))
            out = op.Expand(bias_map, op.Concat(frames, op.Shape(w2, end=1), size2, axis=0))
    else:
        out = op.Conv(fused, w2, b2, strides=conv2_strides, pads=conv2_pads)
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
    def forward(ctx, x, codes, w1, b1, w2, b2, conv1_strides, conv1_pads, conv2_strides, conv2_pads, below1, below2):
        conv1_out = F.conv2d(x, w1, b1, conv1_strides, conv1_pads[: len(conv1_pads) // 2]).relu()
        fused = fuse_masked(conv1_out, F.one_hot(codes, DECISIONS).to(x.dtype))
        return F.conv2d(fused, w2, b2, conv2_strides, conv2_pads[: len(conv2_pads) // 2])

    @staticmethod
    def symbolic(g, x, codes, w1, b1, w2, b2, conv1_strides, conv1_pads, conv2_strides, conv2_pads, below1, below2):
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
            conv1_union_below_f=below1,
            conv2_union_below_f=below2,
            channel_block_i=CHANNEL_BLOCK if w1.type().sizes()[0] % CHANNEL_BLOCK == 0 else 1,
        )


def gated_conv_pair(
    x: torch.Tensor,
    codes: torch.Tensor | None,
    first: FoldedConv,
    second: FoldedConv,
    *,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    costs: PairCosts | None = None,
) -> torch.Tensor:
    """``clipwise.models.adafuse.gated_conv_pair`` with one ``clipwise::GatedConvPair`` node for the gated part when
    traced
    (the residual sum and the ReLU after it stay standard nodes).

    Eagerly it computes densely (the masked reference): it exists to be traced. ``codes`` None (full compute)
    is the dense pair, traced as plain convolutions. The node's union thresholds start at
    ``DEFAULT_UNION_BELOW``; ``clipwise.export.calibration`` sets them for the machine that serves the graph.
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
        DEFAULT_UNION_BELOW,
        DEFAULT_UNION_BELOW,
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
