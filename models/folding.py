"""Inference convolutions with their batch norm folded in, shared by the 2D ResNets (``clipwise.models.tsn``) and
AdaFuse's gated blocks (``clipwise.models.adafuse``).

``FoldedConv`` is ``bn(conv(x))`` as one convolution with a bias; on the CPU without autograd it runs as one
oneDNN primitive with its ReLU and a residual sum fused in (the kernel torch.compile emits for the pattern),
optionally over a subset of its output or input channels (gathered weights: AdaFuse computes only those).
``FoldCache`` keeps each (conv, bn) pair's fold while their tensors stay the same, so a served model folds
once; a changed or moved weight or statistic is folded again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from clipwise.models.flops import conv_macs, record_macs


def conv_output_size(conv: nn.Conv2d | FoldedConv, size: Sequence[int]) -> tuple[int, int]:
    """Spatial output size of a 2D convolution for an input of spatial ``size``."""

    def along(axis: int) -> int:
        k, s, p, d = conv.kernel_size[axis], conv.stride[axis], conv.padding[axis], conv.dilation[axis]
        return (size[axis] + 2 * p - d * (k - 1) - 1) // s + 1

    return along(0), along(1)


@dataclass(frozen=True)
class FoldedConv:
    """A convolution with its inference-mode batch norm folded in: ``bn(conv(x)) == conv2d(x, weight, bias)``.

    ``weight`` is contiguous, ``weight_channels_last`` the same values channels_last like the activations (the
    same tensor for a 1×1 kernel): dense calls and output-channel gathers read that one, so no call converts a
    whole weight; input-channel gathers read ``weight``, where they copy runs of kh·kw values.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    weight_channels_last: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        channels_last = self.weight.contiguous(memory_format=torch.channels_last)
        object.__setattr__(self, "weight_channels_last", channels_last)

    @staticmethod
    def of(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> FoldedConv:
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        weight = (conv.weight * scale[:, None, None, None]).contiguous()
        return FoldedConv(weight, bias, conv.stride, conv.padding, conv.dilation)  # type: ignore[arg-type]

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    def __call__(
        self,
        x: torch.Tensor,
        outputs: torch.Tensor | None = None,
        inputs: torch.Tensor | None = None,
        *,
        residual: torch.Tensor | None = None,
        relu: bool = False,
    ) -> torch.Tensor:
        """``relu(conv(x) + residual)`` over the ``outputs`` and ``inputs`` channels listed (default: all).

        On the CPU without autograd it is one oneDNN primitive with the bias, the sum and the ReLU fused in
        (the kernel torch.compile emits for the same pattern); elsewhere the steps run one by one.
        """
        weight, bias = self.weight_channels_last, self.bias
        if inputs is not None:
            weight = channels_of(weight, inputs)
        if outputs is not None:
            weight, bias = _gathered(weight, 0, outputs), _gathered(bias, 0, outputs)
        if _fusable(x):
            fused = torch.ops.mkldnn._convolution_pointwise
            geometry = (list(self.padding), list(self.stride), list(self.dilation), 1)
            activation = "relu" if relu else None
            if residual is None:
                return fused(x, weight, bias, *geometry, activation or "none", [], None)
            return fused.binary(x, residual, weight, bias, *geometry, "add", None, activation, [], None)
        out = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)
        if residual is not None:
            out += residual
        return out.relu_() if relu else out

    def macs(self, output: torch.Tensor, in_channels: int) -> int:
        """MACs per sample of a call that gave ``output`` from ``in_channels`` inputs."""
        return conv_macs(output.shape[1:], in_channels, self.kernel_size)

    def macs_per_frame(self, size: Sequence[int], in_channels: int, out_channels: int) -> int:
        """MACs per sample of a call from ``in_channels`` to ``out_channels`` with an output of spatial ``size``."""
        return conv_macs((out_channels, *size), in_channels, self.kernel_size)

    def bias_only(
        self,
        like: torch.Tensor,
        frames: int,
        size: Sequence[int],
        *,
        residual: torch.Tensor | None = None,
        relu: bool = False,
    ) -> torch.Tensor:
        """What a call over no input channel gives, without a convolution: ``relu(bias + residual)``."""
        out = torch.empty((frames, len(self.bias), *size), dtype=like.dtype, device=like.device)
        out = out.contiguous(memory_format=torch.channels_last)
        out.copy_(self.bias[:, None, None].expand_as(out[0]))
        if residual is not None:
            out += residual
        return out.relu_() if relu else out

    def dense(self, x: torch.Tensor, *, residual: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
        """All channels, its MACs reported (it runs outside the nn.Conv2d that the counter sees)."""
        out = self(x, residual=residual, relu=relu)
        record_macs(x.shape[0] * self.macs(out, x.shape[1]))
        return out


def _fusable(x: torch.Tensor) -> bool:
    """The fused oneDNN kernel applies: CPU float32 without autograd, and not while tracing (the JIT
    tracer and exporters know the plain ops only)."""
    return (
        not torch.jit.is_tracing()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_grad_enabled()
    )


def _versions(tensors: Sequence[torch.Tensor | None]) -> tuple[tuple[int, int], ...]:
    return tuple((t._version, t.data_ptr()) if t is not None else (0, 0) for t in tensors)


@dataclass(frozen=True)
class _CachedFold:
    sources: tuple[torch.Tensor | None, ...]  # the conv's and the BN's tensors the fold was made of
    versions: tuple[tuple[int, int], ...]
    folded: FoldedConv

    def holds(self, sources: tuple[torch.Tensor | None, ...]) -> bool:
        """True while ``sources`` are the same tensors, unchanged in place and not moved."""
        same = all(a is b for a, b in zip(self.sources, sources, strict=True))
        return same and self.versions == _versions(sources)


CHANNEL_BLOCK = 16  # oneDNN's blocked kernels: 16-channel runs (measured here: 48 of 64 outputs beat 40 and 56)


def channel_blocks(channels: torch.Tensor) -> torch.Tensor | None:
    """The indices of the ``CHANNEL_BLOCK``-channel blocks ``channels`` consists of, or None when it is not
    whole aligned blocks in order."""
    if not len(channels) or len(channels) % CHANNEL_BLOCK:
        return None
    runs = channels.view(-1, CHANNEL_BLOCK)
    starts = runs[:, 0]
    aligned = (starts % CHANNEL_BLOCK == 0).all() and (runs == starts[:, None] + torch.arange(CHANNEL_BLOCK)).all()
    return starts // CHANNEL_BLOCK if bool(aligned) else None


def channels_of(tensor: torch.Tensor, channels: torch.Tensor | None) -> torch.Tensor:
    """Channels (dim 1) of a channels_last 4-D tensor, still channels_last (all of it when None). Whole aligned
    blocks are copied as 16-float runs; other sets element by element (much slower for large tensors)."""
    if channels is None:
        return tensor
    last = tensor.permute(0, 2, 3, 1)
    blocks = channel_blocks(channels)
    if blocks is None:
        return last[..., channels.to(tensor.device)].permute(0, 3, 1, 2)
    rows = last.reshape(*last.shape[:3], -1, CHANNEL_BLOCK).index_select(3, blocks.to(tensor.device))
    return rows.reshape(*last.shape[:3], -1).permute(0, 3, 1, 2)


def _gathered(tensor: torch.Tensor, dim: int, channels: torch.Tensor) -> torch.Tensor:
    """The slices of ``tensor`` along ``dim`` that ``channels`` lists; the tensor itself if that is all of it.
    Output channels of a channels_last weight stay channels_last (whole (kh, kw, I) rows are copied)."""
    if len(channels) == tensor.shape[dim] and bool((channels == torch.arange(len(channels))).all()):
        return tensor
    channels = channels.to(tensor.device)
    if dim == 0 and tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return tensor.permute(0, 2, 3, 1).index_select(0, channels).permute(0, 3, 1, 2)
    return tensor.index_select(dim, channels)


class FoldCache:
    """The folds of (conv, bn) pairs for inference, each remade when a source tensor changes."""

    def __init__(self) -> None:
        self._folds: dict[nn.Module, _CachedFold] = {}

    def __call__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> FoldedConv:
        sources = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        if torch.is_grad_enabled() or any(t is not None and t.is_inference() for t in sources):
            return FoldedConv.of(conv, bn)  # differentiable, or nothing to key a cache on
        cached = self._folds.get(conv)
        if cached is None or not cached.holds(sources):
            with torch.inference_mode(False), torch.no_grad():  # usable in and out of inference mode
                cached = self._folds[conv] = _CachedFold(sources, _versions(sources), FoldedConv.of(conv, bn))
        return cached.folded
