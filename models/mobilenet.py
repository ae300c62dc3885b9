"""MobileNetV2 (Sandler et al., 2018) as a per-image feature extractor.

The torchvision layout: a 3×3 stride-2 stem, the seven inverted-residual settings of the paper's Table 2,
a 1×1 conv to 1280 channels (scaled up, never down, by the width multiplier) and global average pooling.
Channel counts are rounded to multiples of 8 as torchvision does. There is no classifier: the caller
puts its own heads on the pooled features (Ada3D's selection net).
"""

from __future__ import annotations

from torch import Tensor, nn

# (expansion t, output channels c, repeats n, first stride s), Table 2 of the paper.
INVERTED_RESIDUAL_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) → BatchNorm → ReLU6."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1×1 expansion → 3×3 depthwise (carries the stride) → linear 1×1 projection, residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        expand = [ConvBNReLU6(in_channels, hidden)] if expansion != 1 else []
        self.body = nn.Sequential(
            *expand,
            ConvBNReLU6(hidden, hidden, kernel=3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileNetV2Features(nn.Module):
    """MobileNetV2 trunk: (B, 3, H, W) images → (B, ``out_channels``) pooled features."""

    def __init__(self, width_mult: float = 1.0) -> None:
        super().__init__()
        channels = make_divisible(STEM_CHANNELS * width_mult)
        layers: list[nn.Module] = [ConvBNReLU6(3, channels, kernel=3, stride=2)]
        for expansion, base_out, repeats, first_stride in INVERTED_RESIDUAL_SETTINGS:
            out_channels = make_divisible(base_out * width_mult)
            for index in range(repeats):
                stride = first_stride if index == 0 else 1
                layers.append(InvertedResidual(channels, out_channels, stride, expansion))
                channels = out_channels
        self.out_channels = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        layers.append(ConvBNReLU6(channels, self.out_channels))
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.pool(self.layers(images)).flatten(1)
