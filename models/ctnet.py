"""CT-Net (Li et al., ICLR 2021): ResNet-50 with Channel Tensorization blocks, after the authors' code.

The network is a 2D ResNet-50 run frame by frame (1×k×k convs on (N, C, T, H, W), the building blocks of
``clipwise.models.resnet3d`` with every temporal kernel 1) in which the odd-indexed bottleneck of each stage (res2:
block 1; res3: 1, 3; res4: 1, 3, 5; res5: 1) is a CT-Block: its 3×3 conv becomes a CT-Module.

CT-Module on C channels, tensorised as C = C1 × C2 with C1 = 2^floor(log2(C) / 2), C2 = 2^ceil(log2(C) / 2)
(64 → 8×8, 128 → 8×16, 256 → 16×16, 512 → 16×32). One tensor-separable step on a sub-dimension is, with the
channels grouped so that only that sub-dimension's channels interact:

* a grouped 1×3×3 conv and a grouped 3×1×1 conv in parallel (each + BN + ReLU);
* tensor excitation of each: spatial (average over time, grouped 1×3×3 squeeze to C/4 + BN + ReLU, grouped
  1×3×3 expand, sigmoid) on the spatial branch, temporal (average over space, the same with 3×1×1 convs) on
  the temporal branch; the two are summed;
* channel excitation of the sum (average over space, grouped 1×1×1 squeeze / expand, sigmoid).

The module runs a step over C2 (groups = C1), a full 1×1×1 fusion conv (+ BN + ReLU), permutes the channels
from (C1, C2) to (C2, C1) order, runs a step over C1 (groups = C2) and permutes back; the paper drops the
fusion conv after the last step. The CT-Block keeps the bottleneck's conv1 and conv3 and adds no BN after the
module (its output is non-negative, so the bottleneck's ReLU after it changes nothing).

Choices where the paper is silent, from the authors' code base (a TSM fork): TSN segment sampling (the
Something-Something setting of the paper's presets, 174 classes); the stem and head of torchvision's
ResNet-50, with the per-frame logits averaged over segments, here computed as one linear layer on the
features averaged over frames and space (the same logits, 1/T of the head's MACs); dropout 0.5; MSRA
fan-out init (the authors start the ResNet part from ImageNet weights, which Clipwise does not download).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from clipwise.models.base import ClipModelConfig, VideoClassifier
from clipwise.models.registry import register_preset
from clipwise.models.resnet3d import ClassifierHead, Kernel3d, Stem, conv3d, init_weights, make_stages

SPATIAL: Kernel3d = (1, 3, 3)
TEMPORAL: Kernel3d = (3, 1, 1)
POINTWISE: Kernel3d = (1, 1, 1)


def tensorize_channels(channels: int) -> tuple[int, int]:
    """C = C1 × C2 with C1 = 2^floor(log2(C) / 2) and C2 = 2^ceil(log2(C) / 2); C must be a power of two."""
    half_log = math.log2(channels) / 2
    c1, c2 = 2 ** math.floor(half_log), 2 ** math.ceil(half_log)
    if c1 * c2 != channels:
        raise ValueError(f"CT-Module needs a power-of-two channel count, got {channels}")
    return c1, c2


def conv_bn_relu(in_channels: int, out_channels: int, kernel: Kernel3d, groups: int = 1) -> nn.Sequential:
    """Grouped "same"-padded conv, BN, ReLU: every conv of the CT-Module except the excitations' expand."""
    return nn.Sequential(
        conv3d(in_channels, out_channels, kernel, groups=groups), nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True)
    )


class TensorExcitation(nn.Module):
    """``x * sigmoid(expand(squeeze(mean of x over pool_dims)))`` with grouped convs of one kernel shape."""

    def __init__(self, channels: int, groups: int, kernel: Kernel3d, pool_dims: tuple[int, ...], reduction: int):
        super().__init__()
        self.pool_dims = pool_dims
        self.squeeze = conv_bn_relu(channels, channels // reduction, kernel, groups)
        self.expand = conv3d(channels // reduction, channels, kernel, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(self.squeeze(x.mean(self.pool_dims, keepdim=True))))


class TensorSeparableStep(nn.Module):
    """Spatial and temporal grouped convs in parallel, each excited, summed, then channel excitation.

    ``groups`` consecutive channel blocks: the channels of one block (one sub-dimension) interact.
    """

    def __init__(self, channels: int, groups: int, reduction: int) -> None:
        super().__init__()
        self.spatial = conv_bn_relu(channels, channels, SPATIAL, groups)
        self.temporal = conv_bn_relu(channels, channels, TEMPORAL, groups)
        self.spatial_excitation = TensorExcitation(channels, groups, SPATIAL, pool_dims=(2,), reduction=reduction)
        self.temporal_excitation = TensorExcitation(channels, groups, TEMPORAL, pool_dims=(3, 4), reduction=reduction)
        self.channel_excitation = TensorExcitation(channels, groups, POINTWISE, pool_dims=(3, 4), reduction=reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.spatial_excitation(self.spatial(x)) + self.temporal_excitation(self.temporal(x))
        return self.channel_excitation(fused)


def transpose_channels(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Reorder channels laid out as (rows, cols) to (cols, rows)."""
    n, _, *rest = x.shape
    return x.reshape(n, rows, cols, *rest).transpose(1, 2).reshape(x.shape)


class CTModule(nn.Module):
    """Channel Tensorization Module with Tensor Excitation (K = 2 sub-dimensions), replacing a 3×3 conv."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.c1, self.c2 = tensorize_channels(channels)
        self.first = TensorSeparableStep(channels, groups=self.c1, reduction=reduction)
        self.fusion = conv_bn_relu(channels, channels, POINTWISE)
        self.second = TensorSeparableStep(channels, groups=self.c2, reduction=reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fusion(self.first(x))
        x = self.second(transpose_channels(x, self.c1, self.c2))
        return transpose_channels(x, self.c2, self.c1)


@dataclass
class CTNetConfig(ClipModelConfig):
    """CT-Net on a ResNet: widths and depths of res2..res5, CT-Blocks at the odd block indices."""

    stem_width: int = 64
    widths: tuple[int, ...] = (64, 128, 256, 512)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    expansion: int = 4
    excitation_reduction: int = 4
    dropout: float = 0.5


class CTNet(VideoClassifier):
    """CT-Net: a frame-wise ResNet whose odd-indexed bottlenecks are CT-Blocks."""

    family = "ctnet"
    sampling = "segments"

    def __init__(self, config: CTNetConfig, preset: str = "") -> None:
        super().__init__(config, preset)
        self.stem = Stem(3, config.stem_width, temporal_kernel=1)
        self.stages = make_stages(
            config.stem_width,
            config.widths,
            config.depths,
            temporal_kernels=[(1,)] * len(config.depths),
            expansion=config.expansion,
            spatial_op=self._ct_module,
        )
        self.head = ClassifierHead(config.widths[-1] * config.expansion, config.num_classes, config.dropout)
        init_weights(self)

    def _ct_module(self, block_index: int, width: int) -> CTModule | None:
        return CTModule(width, self.config.excitation_reduction) if block_index % 2 == 1 else None

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = self.stem(clips)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


register_preset("ctnet_r50", CTNet, CTNetConfig(num_classes=174, size=256))
# Tiny twin: the same layout at a quarter of the width (16 channels is the narrowest a CT-Module takes with
# its C/4 excitation squeeze) and two blocks a stage, so each stage has one CT-Block.
register_preset(
    "ctnet_r50_tiny", CTNet, CTNetConfig(stem_width=16, widths=(16, 32, 64, 128), depths=(2, 2, 2, 2), size=64)
)
