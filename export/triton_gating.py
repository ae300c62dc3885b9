"""AdaFuse's gated conv pair as Triton kernels: gathered convolutions with the reuse / skip scatter.

A ``clipwise.models.adafuse.GatedPairExecutor``, as the eager executor (``clipwise.models.adafuse.gated_conv_pair``)
and the
``clipwise::GatedConvPair`` ONNX operator are; the torch backend runs it on CUDA
(``clipwise.export.gpu.gated_pairs_on``,
through ``clipwise.models.adafuse.executing_gated_pairs``). Each frame computes its own channel sets, Eq. 5 exactly
(the eager executor's ``sets`` partition, without grouping frames): two kernels, each an implicit GEMM over
(output channels × output pixels) tiles of one frame, any kernel size, stride, padding and dilation, any
memory layout of the maps (strides are arguments: the backbone runs channels_last), float32 with float32
accumulation, the weights laid out per call so that a tile's loads of them are contiguous:

1. ``_gathered_rows_conv``: conv1 over the channels each frame needs (kept at t or reused at t+1) only, the
   frame's channel list compacted so that tiles past its length exit at once; the epilogue adds the folded
   batch-norm bias, applies the ReLU and scatters each channel into the fused map: to frame t if kept there,
   to frame t+1 if reused there. Skipped channels are never written (the map starts at zero).
2. ``_gathered_columns_conv``: conv2 reading only the channels kept or reused at t (a compacted list and the
   matching weight columns; the loop over input channels stops at the frame's count), plus bias, the
   optional residual and ReLU. A frame that reads no channel gets ``relu(bias + residual)``.

A reuse at a clip's first frame copies zeros: it runs and counts as a skip, as in the eager executor. The
MACs reported (per clip, ``clipwise.models.flops.record_macs``) are nominal: what the decisions cost by Eq. 5, each
frame's channel counts times one channel's MACs, computed from the decisions and not counted in the kernels
(whose tiles are whole: a frame's last tile of channels or pixels runs masked lanes too). The dot products run
in IEEE float32, or in TF32 on CUDA where ``torch.backends.cudnn.allow_tf32`` lets the dense convolutions
beside them use it (PyTorch's default).

Triton is imported with this module: import it only where it is installed (``clipwise.export.runtime`` does so for
CUDA clips). With ``TRITON_INTERPRET=1`` set before the import, the kernels run on CPU tensors in Triton's
interpreter: ``tests/test_triton_gating.py`` checks them that way on every run, and natively where CUDA is
present. They have not yet been timed on a GPU (``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from clipwise.models.adafuse import KEEP, REUSE, note_executed
from clipwise.models.adafuse import gated_conv_pair as eager_gated_conv_pair
from clipwise.models.flops import conv_macs, record_macs
from clipwise.models.folding import FoldedConv, conv_output_size
from clipwise.models.gating_partitions import PairCosts

BLOCK_OUT, BLOCK_PIXELS, BLOCK_IN = 64, 64, 64  # a tile: output channels × output pixels, by input channels


@triton.jit
def _gathered_rows_conv(
    x_ptr, weight_ptr, bias_ptr, rows_ptr, counts_ptr, keep_ptr, reused_next_ptr, fused_ptr,
    in_channels, height, width, channels, out_height, out_width,
    stride_h, stride_w, padding_h, padding_w, dilation_h, dilation_w,
    x_sn, x_sc, x_sh, x_sw, f_sn, f_sc, f_sh, f_sw,
    KERNEL_H: tl.constexpr, KERNEL_W: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    frame, tile_o, tile_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    count = tl.load(counts_ptr + frame)
    if tile_o * BLOCK_O < count:
        slots = tile_o * BLOCK_O + tl.arange(0, BLOCK_O)
        slot_mask = slots < count
        rows = tl.load(rows_ptr + frame * channels + slots, mask=slot_mask, other=0)
        pixels = tile_p * BLOCK_P + tl.arange(0, BLOCK_P)
        pixel_mask = pixels < out_height * out_width
        out_y, out_x = pixels // out_width, pixels % out_width
        acc = tl.zeros((BLOCK_O, BLOCK_P), dtype=tl.float32)
        weight_rows = weight_ptr + rows * in_channels  # weights (kh, kw, out, in): a row's inputs contiguous
        for kh in tl.static_range(KERNEL_H):
            for kw in tl.static_range(KERNEL_W):
                in_y = out_y * stride_h - padding_h + kh * dilation_h
                in_x = out_x * stride_w - padding_w + kw * dilation_w
                inside = pixel_mask & (in_y >= 0) & (in_y < height) & (in_x >= 0) & (in_x < width)
                taps = x_ptr + frame * x_sn + in_y * x_sh + in_x * x_sw
                weight_taps = weight_rows + (kh * KERNEL_W + kw) * (channels * in_channels)
                for start in range(0, in_channels, BLOCK_C):
                    ins = start + tl.arange(0, BLOCK_C)
                    in_mask = ins < in_channels
                    w = tl.load(
                        weight_taps[:, None] + ins[None, :], mask=slot_mask[:, None] & in_mask[None, :], other=0.0
                    )
                    v = tl.load(taps[None, :] + ins[:, None] * x_sc, mask=in_mask[:, None] & inside[None, :], other=0.0)
                    acc += tl.dot(w, v, input_precision=PRECISION)
        acc += tl.load(bias_ptr + rows, mask=slot_mask, other=0.0)[:, None]
        acc = tl.maximum(acc, 0.0)
        keep = tl.load(keep_ptr + frame * channels + rows, mask=slot_mask, other=0) != 0
        reused_next = tl.load(reused_next_ptr + frame * channels + rows, mask=slot_mask, other=0) != 0
        target = fused_ptr + frame * f_sn + rows[:, None] * f_sc + (out_y * f_sh + out_x * f_sw)[None, :]
        tl.store(target, acc, mask=(slot_mask & keep)[:, None] & pixel_mask[None, :])
        tl.store(target + f_sn, acc, mask=(slot_mask & reused_next)[:, None] & pixel_mask[None, :])


@triton.jit
def _gathered_columns_conv(
    fused_ptr, weight_ptr, bias_ptr, columns_ptr, counts_ptr, residual_ptr, out_ptr,
    channels, height, width, out_channels, out_height, out_width,
    stride_h, stride_w, padding_h, padding_w, dilation_h, dilation_w,
    f_sn, f_sc, f_sh, f_sw, o_sn, o_sc, o_sh, o_sw,
    KERNEL_H: tl.constexpr, KERNEL_W: tl.constexpr, PRECISION: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    frame, tile_o, tile_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    count = tl.load(counts_ptr + frame)
    outs = tile_o * BLOCK_O + tl.arange(0, BLOCK_O)
    out_mask = outs < out_channels
    pixels = tile_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_mask = pixels < out_height * out_width
    out_y, out_x = pixels // out_width, pixels % out_width
    acc = tl.zeros((BLOCK_O, BLOCK_P), dtype=tl.float32)
    for start in range(0, count, BLOCK_C):  # the frame's channels, loaded once for every tap
        slots = start + tl.arange(0, BLOCK_C)
        slot_mask = slots < count
        columns = tl.load(columns_ptr + frame * channels + slots, mask=slot_mask, other=0)
        # weights (kh, kw, in, out): a column's outputs contiguous
        weight_columns = weight_ptr + outs[:, None] + columns[None, :] * out_channels
        weight_mask = out_mask[:, None] & slot_mask[None, :]
        planes = fused_ptr + frame * f_sn + columns * f_sc
        for kh in tl.static_range(KERNEL_H):
            for kw in tl.static_range(KERNEL_W):
                in_y = out_y * stride_h - padding_h + kh * dilation_h
                in_x = out_x * stride_w - padding_w + kw * dilation_w
                inside = pixel_mask & (in_y >= 0) & (in_y < height) & (in_x >= 0) & (in_x < width)
                w = tl.load(
                    weight_columns + (kh * KERNEL_W + kw) * (channels * out_channels), mask=weight_mask, other=0.0
                )
                v = tl.load(
                    planes[:, None] + (in_y * f_sh + in_x * f_sw)[None, :],
                    mask=slot_mask[:, None] & inside[None, :],
                    other=0.0,
                )
                acc += tl.dot(w, v, input_precision=PRECISION)
    acc += tl.load(bias_ptr + outs, mask=out_mask, other=0.0)[:, None]
    offsets = frame * o_sn + outs[:, None] * o_sc + (out_y * o_sh + out_x * o_sw)[None, :]
    mask = out_mask[:, None] & pixel_mask[None, :]
    if HAS_RESIDUAL:
        acc += tl.load(residual_ptr + offsets, mask=mask, other=0.0)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    tl.store(out_ptr + offsets, acc, mask=mask)


def _compacted(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of (F, C) booleans, the indices of the true entries first (int32, padded) and their count."""
    order = torch.argsort((~flags).to(torch.int8), dim=1, stable=True)
    return order.to(torch.int32).contiguous(), flags.sum(1).to(torch.int32)


def _precision(x: torch.Tensor) -> str:
    return "tf32" if x.is_cuda and torch.backends.cudnn.allow_tf32 else "ieee"


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last where ``x`` is (the backbone's layout), contiguous otherwise."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def _map_like(x: torch.Tensor, frames: int, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """An uninitialised float32 (frames, channels, *size) map in ``x``'s memory format."""
    return torch.empty((frames, channels, *size), device=x.device, dtype=torch.float32, memory_format=_memory_format(x))


def _geometry(conv: FoldedConv) -> tuple[int, ...]:
    """Stride, padding and dilation (height, width each) of a convolution, as the kernels take them."""
    return (*conv.stride, *conv.padding, *conv.dilation)


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
    """``second(fuse(relu(first(x))), residual, relu)`` under ``codes`` (N, T, C) with the kernels above; None
    keeps everything (the dense eager path). ``costs`` (the eager executor's cost models) is not used: every
    frame computes its own channel set. Reports the decisions' nominal MACs per clip (Eq. 5)."""
    if codes is None:
        return eager_gated_conv_pair(x, None, first, second, residual=residual, relu=relu)
    if x.dtype != torch.float32:
        raise TypeError(f"the Triton gated pair computes float32, got {x.dtype}")
    clips, frames, channels = codes.shape
    keep = codes == KEEP
    reuse = (codes == REUSE) & (torch.arange(frames, device=codes.device) > 0)[None, :, None]  # none at frame 0
    reused_next = F.pad(reuse[:, 1:], (0, 0, 0, 1))
    rows, row_counts = _compacted((keep | reused_next).flatten(0, 1))
    columns, column_counts = _compacted((keep | reuse).flatten(0, 1))
    total_frames, in_channels, height, width = x.shape
    height1, width1 = conv_output_size(first, (height, width))
    height2, width2 = conv_output_size(second, (height1, width1))
    fused = _map_like(x, total_frames, channels, (height1, width1)).zero_()
    grid1 = (total_frames, triton.cdiv(channels, BLOCK_OUT), triton.cdiv(height1 * width1, BLOCK_PIXELS))
    weight1 = first.weight.permute(2, 3, 0, 1).contiguous()  # (kh, kw, out, in)
    _gathered_rows_conv[grid1](
        x, weight1, first.bias, rows, row_counts,
        keep.flatten(0, 1).to(torch.int8), reused_next.flatten(0, 1).to(torch.int8), fused,
        in_channels, height, width, channels, height1, width1, *_geometry(first), *x.stride(), *fused.stride(),
        KERNEL_H=first.kernel_size[0], KERNEL_W=first.kernel_size[1], PRECISION=_precision(x),
        BLOCK_O=BLOCK_OUT, BLOCK_P=BLOCK_PIXELS, BLOCK_C=BLOCK_IN,
    )  # fmt: skip
    out_channels = second.weight.shape[0]
    out = _map_like(x, total_frames, out_channels, (height2, width2))
    if residual is not None:
        residual = residual.to(torch.float32).contiguous(memory_format=_memory_format(out))
    grid2 = (total_frames, triton.cdiv(out_channels, BLOCK_OUT), triton.cdiv(height2 * width2, BLOCK_PIXELS))
    weight2 = second.weight.permute(2, 3, 1, 0).contiguous()  # (kh, kw, in, out)
    _gathered_columns_conv[grid2](
        fused, weight2, second.bias, columns, column_counts, out if residual is None else residual, out,
        channels, height1, width1, out_channels, height2, width2, *_geometry(second), *fused.stride(), *out.stride(),
        KERNEL_H=second.kernel_size[0], KERNEL_W=second.kernel_size[1], PRECISION=_precision(x),
        HAS_RESIDUAL=residual is not None, RELU=relu,
        BLOCK_O=BLOCK_OUT, BLOCK_P=BLOCK_PIXELS, BLOCK_C=BLOCK_IN,
    )  # fmt: skip
    nominal_conv1 = row_counts.double() * conv_macs((height1, width1), in_channels, first.kernel_size)
    nominal_conv2 = column_counts.double() * conv_macs((out_channels, height2, width2), 1, second.kernel_size)
    record_macs((nominal_conv1 + nominal_conv2).view(clips, frames).sum(1))
    note_executed("triton", "triton")
    return out
