"""Layers shared by the 3D families: ``FrameConv3d``, a 3D conv that runs kernels one frame deep as 2D convs.

Why. On CPU, PyTorch (2.13, ``ConvParams::use_mkldnn`` in ``aten/src/ATen/native/Convolution.cpp``, checked
here with ``torch._C._select_conv_backend``) gives a float convolution to oneDNN only if its batch exceeds 1,
or it is grouped, or its kernel exceeds 3×3, or N·C·T·H of its input exceeds 20480 (the width does not count;
1×1 kernels also need 2+ threads or a batch of 16). Anything else runs the reference ``slow_conv3d``. A single
clip with few frames or a small resolution fails the test: at batch 1, 31 of the 53 convs of I3D-R50 on
4×224² (the clips Ada3D shortens by dropping frames) and nearly every ungrouped conv of the tiny presets.

What. A conv whose kernel, stride and padding are trivial in time (kt = 1, st = 1, pt = 0) is one 2D conv
applied to every frame. ``frame_conv3d`` runs it as ``F.conv2d`` on the frames folded into the batch,
(N·T, C, H, W), which oneDNN takes for any clip of two frames or more, and views the result back as
(N, C', T, H', W'). The fold is free in channels-last memory: an (N, C, T, H, W) tensor stored as
N, T, H, W, C (``torch.channels_last_3d``) is, seen as (N·T, C, H, W), a channels-last 2D tensor, and
oneDNN's channels-last output views back the same way. So the input is made channels-last 3D (a copy only
when it is not already) and the output stays channels-last 3D; batch norm, activations and additions keep
that layout, so in a run of frame convs only the first one copies. Results equal ``F.conv3d``'s up to float
rounding; the MAC counter sees an ``nn.Conv3d`` with the same output shape, and state dicts are unchanged.

Decision rule: fold every trivial-temporal conv on CPU, whatever conv3d would have picked: folded convs run
like oneDNN's conv3d where conv3d takes it and several times faster where it does not (``benchmarks/conv3d_fold.py``;
the figures are in docs/benchmarks.md).

So no copy of PyTorch's heuristic is needed. The plain conv3d runs for kernels deeper than one frame,
temporal strides or padding, other devices (the slow path is a CPU matter; GPUs were not measured), and
graph capture (tracing, ONNX export, ``torch.compile``), so a captured graph holds one 3D Conv per layer
and its runtime picks its own kernels. ``frame_folding(False)`` turns folding off in a block, for A/B runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_folding_enabled: ContextVar[bool] = ContextVar("clipwise_frame_folding", default=True)


@contextlib.contextmanager
def frame_folding(enabled: bool) -> Iterator[None]:
    """Inside the block (this thread or task), fold frames only if ``enabled``; folding is on by default."""
    token = _folding_enabled.set(enabled)
    try:
        yield
    finally:
        _folding_enabled.reset(token)


def _capturing_graph() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _folds_frames(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int] | str) -> bool:
    """Kernel, stride and padding trivial in time, a batched CPU input, folding on and no graph being captured."""
    trivial_in_time = weight.shape[2] == 1 and stride[0] == 1 and not isinstance(padding, str) and padding[0] == 0
    return (
        trivial_in_time
        and x.dim() == 5
        and x.device.type == "cpu"
        and _folding_enabled.get()
        and not _capturing_graph()
    )


def frame_conv3d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int] | str,
    dilation: Sequence[int],
    groups: int,
) -> Tensor:
    """``F.conv3d`` with the same arguments; on CPU, a kernel trivial in time runs as one ``F.conv2d`` over the
    frames folded into the batch, its output a channels-last 3D view (see the module docstring)."""
    if not _folds_frames(x, weight, stride, padding):
        return F.conv3d(x, weight, bias, stride, padding, dilation, groups)
    clips, channels, frames, height, width = x.shape
    folded = x.contiguous(memory_format=torch.channels_last_3d).transpose(1, 2)
    folded = folded.reshape(clips * frames, channels, height, width)  # a view: channels-last 2D
    out = F.conv2d(folded, weight.squeeze(2), bias, stride[1:], padding[1:], dilation[1:], groups)
    return out.unflatten(0, (clips, frames)).transpose(1, 2)


class FrameConv3d(nn.Conv3d):
    """An ``nn.Conv3d`` (same arguments, parameters, state dict and MAC count) run through ``frame_conv3d``."""

    def forward(self, x: Tensor) -> Tensor:
        if self.padding_mode != "zeros":
            return super().forward(x)
        return frame_conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
