"""AdaFuse's gated conv pair as Triton GPU kernels: gathered convolutions with the reuse / skip scatter.

Same contract as ``models.adafuse.gated_conv_pair`` (the eager CPU reference) and as the
``clipwise::GatedConvPair`` ONNX operator; the torch backend uses it on CUDA (``export.runtime``) through
``models.adafuse.executing_gated_pairs``. Two kernels, each an implicit GEMM over (output channels ×
output pixels) tiles of one frame, any kernel size, stride and padding, NCHW float32, FP32 accumulation:

1. ``_gathered_rows_conv``: conv1 over the channels each frame needs (kept at t or reused at t+1) only, the
   frame's channel list compacted so that tiles past its length exit at once; the epilogue adds the folded
   batch-norm bias, applies the ReLU and scatters each channel into the fused map: to frame t if kept there,
   to frame t+1 if reused there. Skipped channels are never written (the map starts at zero).
2. ``_gathered_columns_conv``: conv2 reading only the channels not skipped at t (a compacted list and the
   matching weight columns; the loop over input channels stops at the frame's count), plus bias, the
   optional residual and ReLU.

The executed MACs are those of ``gated_conv_pair``, reported per clip with ``models.flops.record_macs``.

This module imports Triton at import time: import it only where CUDA and Triton are present
(``available()`` in ``export.runtime`` checks both). It was written where neither exists and has not been
run on a GPU; ``tests/test_export.py`` checks it against the eager reference wherever CUDA is present.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from models.adafuse import KEEP, REUSE, SKIP
from models.adafuse import gated_conv_pair as dense_gated_conv_pair
from models.flops import conv_macs, record_macs
from models.folding import FoldedConv, conv_output_size

BLOCK_OUT, BLOCK_PIXELS, BLOCK_IN = 32, 64, 32


@triton.jit
def _gathered_rows_conv(
    x_ptr, weight_ptr, bias_ptr, rows_ptr, counts_ptr, keep_ptr, reused_next_ptr, fused_ptr,
    in_channels, height, width, channels, out_height, out_width, max_rows, stride, padding,
    KERNEL_H: tl.constexpr, KERNEL_W: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    frame, tile_o, tile_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    count = tl.load(counts_ptr + frame)
    if tile_o * BLOCK_O >= count:
        return
    slots = tile_o * BLOCK_O + tl.arange(0, BLOCK_O)
    slot_mask = slots < count
    rows = tl.load(rows_ptr + frame * max_rows + slots, mask=slot_mask, other=0)
    pixels = tile_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_mask = pixels < out_height * out_width
    out_y, out_x = pixels // out_width, pixels % out_width
    acc = tl.zeros((BLOCK_O, BLOCK_P), dtype=tl.float32)
    for kh in tl.static_range(KERNEL_H):
        for kw in tl.static_range(KERNEL_W):
            in_y, in_x = out_y * stride - padding + kh, out_x * stride - padding + kw
            inside = pixel_mask & (in_y >= 0) & (in_y < height) & (in_x >= 0) & (in_x < width)
            for start in range(0, in_channels, BLOCK_C):
                ins = start + tl.arange(0, BLOCK_C)
                in_mask = ins < in_channels
                w = tl.load(
                    weight_ptr + ((rows[:, None] * in_channels + ins[None, :]) * KERNEL_H + kh) * KERNEL_W + kw,
                    mask=slot_mask[:, None] & in_mask[None, :],
                    other=0.0,
                )
                v = tl.load(
                    x_ptr + ((frame * in_channels + ins[:, None]) * height + in_y[None, :]) * width + in_x[None, :],
                    mask=in_mask[:, None] & inside[None, :],
                    other=0.0,
                )
                acc += tl.dot(w, v, input_precision="ieee")
    acc += tl.load(bias_ptr + rows, mask=slot_mask, other=0.0)[:, None]
    acc = tl.maximum(acc, 0.0)
    keep = tl.load(keep_ptr + frame * channels + rows, mask=slot_mask, other=0) != 0
    reused_next = tl.load(reused_next_ptr + frame * channels + rows, mask=slot_mask, other=0) != 0
    target = fused_ptr + (frame * channels + rows[:, None]) * (out_height * out_width) + pixels[None, :]
    tl.store(target, acc, mask=(slot_mask & keep)[:, None] & pixel_mask[None, :])
    next_frame = channels * out_height * out_width
    tl.store(target + next_frame, acc, mask=(slot_mask & reused_next)[:, None] & pixel_mask[None, :])


@triton.jit
def _gathered_columns_conv(
    fused_ptr, weight_ptr, bias_ptr, columns_ptr, counts_ptr, residual_ptr, out_ptr,
    channels, height, width, out_channels, out_height, out_width, max_columns, stride, padding,
    KERNEL_H: tl.constexpr, KERNEL_W: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
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
    for kh in tl.static_range(KERNEL_H):
        for kw in tl.static_range(KERNEL_W):
            in_y, in_x = out_y * stride - padding + kh, out_x * stride - padding + kw
            inside = pixel_mask & (in_y >= 0) & (in_y < height) & (in_x >= 0) & (in_x < width)
            for start in range(0, count, BLOCK_C):
                slots = start + tl.arange(0, BLOCK_C)
                slot_mask = slots < count
                columns = tl.load(columns_ptr + frame * max_columns + slots, mask=slot_mask, other=0)
                w = tl.load(
                    weight_ptr + ((outs[:, None] * channels + columns[None, :]) * KERNEL_H + kh) * KERNEL_W + kw,
                    mask=out_mask[:, None] & slot_mask[None, :],
                    other=0.0,
                )
                rows_in = (frame * channels + columns[:, None]) * height + in_y[None, :]
                v = tl.load(
                    fused_ptr + rows_in * width + in_x[None, :],
                    mask=slot_mask[:, None] & inside[None, :],
                    other=0.0,
                )
                acc += tl.dot(w, v, input_precision="ieee")
    acc += tl.load(bias_ptr + outs, mask=out_mask, other=0.0)[:, None]
    offsets = (frame * out_channels + outs[:, None]) * (out_height * out_width) + pixels[None, :]
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


def _square(values: tuple[int, ...], name: str) -> int:
    if values[0] != values[1]:
        raise ValueError(f"the Triton gated pair takes square {name}s, got {values}")
    return values[0]


def gated_conv_pair(
    x: torch.Tensor,
    codes: torch.Tensor | None,
    first: FoldedConv,
    second: FoldedConv,
    *,
    residual: torch.Tensor | None = None,
    relu: bool = False,
) -> torch.Tensor:
    """``models.adafuse.gated_conv_pair`` on CUDA with the kernels above (``codes`` None: dense, in torch)."""
    if codes is None:
        return dense_gated_conv_pair(x, None, first, second, residual=residual, relu=relu)
    clips, frames, channels = codes.shape
    keep, reuse = codes == KEEP, codes == REUSE
    reused_next = F.pad(reuse[:, 1:], (0, 0, 0, 1))
    rows, row_counts = _compacted((keep | reused_next).flatten(0, 1))
    columns, column_counts = _compacted((codes != SKIP).flatten(0, 1))
    x = x.contiguous()
    total_frames, in_channels, height, width = x.shape
    height1, width1 = conv_output_size(first, (height, width))
    height2, width2 = conv_output_size(second, (height1, width1))
    fused = torch.zeros(total_frames, channels, height1, width1, device=x.device, dtype=torch.float32)
    grid1 = (total_frames, triton.cdiv(channels, BLOCK_OUT), triton.cdiv(height1 * width1, BLOCK_PIXELS))
    _gathered_rows_conv[grid1](
        x, first.weight.contiguous(), first.bias.contiguous(), rows, row_counts,
        keep.flatten(0, 1).to(torch.int8).contiguous(), reused_next.flatten(0, 1).to(torch.int8).contiguous(), fused,
        in_channels, height, width, channels, height1, width1, channels,
        _square(first.stride, "stride"), _square(first.padding, "padding"),
        KERNEL_H=first.kernel_size[0], KERNEL_W=first.kernel_size[1],
        BLOCK_O=BLOCK_OUT, BLOCK_P=BLOCK_PIXELS, BLOCK_C=BLOCK_IN,
    )  # fmt: skip
    out_channels = second.weight.shape[0]
    out = torch.empty(total_frames, out_channels, height2, width2, device=x.device, dtype=torch.float32)
    grid2 = (total_frames, triton.cdiv(out_channels, BLOCK_OUT), triton.cdiv(height2 * width2, BLOCK_PIXELS))
    _gathered_columns_conv[grid2](
        fused, second.weight.contiguous(), second.bias.contiguous(), columns, column_counts,
        out if residual is None else residual.contiguous(), out,
        channels, height1, width1, out_channels, height2, width2, channels,
        _square(second.stride, "stride"), _square(second.padding, "padding"),
        KERNEL_H=second.kernel_size[0], KERNEL_W=second.kernel_size[1],
        HAS_RESIDUAL=residual is not None, RELU=relu,
        BLOCK_O=BLOCK_OUT, BLOCK_P=BLOCK_PIXELS, BLOCK_C=BLOCK_IN,
    )  # fmt: skip
    conv1_macs = row_counts.double() * conv_macs((height1, width1), in_channels, first.kernel_size)
    conv2_macs = column_counts.double() * conv_macs((out_channels, height2, width2), 1, second.kernel_size)
    record_macs((conv1_macs + conv2_macs).view(clips, frames).sum(1).cpu())
    return out
