"""TSN and TSM on 2D ResNets: one family, TSM being TSN plus the temporal shift.

A clip (N, 3, T, H, W) is folded into a batch of N·T frames, a 2D ResNet gives per-frame logits and the
clip's logits are their average over T (TSN's average consensus). TSM inserts a bidirectional temporal
shift at the start of every residual branch ("residual shift"): 1/``shift_div`` of the channels take the
next frame's features, another 1/``shift_div`` the previous frame's, with zeros at the clip ends; the
identity path is not shifted (``shift_shortcut`` makes a downsampling shortcut read the shifted input, as the
AdaFuse authors' TSM does). The shift moves memory only, so TSM costs exactly the FLOPs of TSN.

Choices where the papers are silent follow the TSM code base: the shift wraps conv1 of every block of
every stage (``shift_place="blockres"``, ``shift_div=8``), channels ``[0, c/8)`` take frame t+1 and
``[c/8, c/4)`` frame t−1; dropout 0.5 before the classifier, whose weights start N(0, 0.001); per-frame
logits, then the mean over frames. The ResNets are torchvision's v1.5 (stride on the 3×3 conv of a
bottleneck) with torchvision's names, so ``clipwise.models.adafuse`` can take the blocks apart; convolutions start
from Kaiming-normal (fan-out) weights as in torchvision, since nothing is downloaded.

Blocks take the number of frames per clip as a forward argument, ``block(x, frames)``: the model knows T
from its input and hands it down, and no block keeps per-call state. The backbone runs channels_last, which
oneDNN runs faster than NCHW on CPU.

The model's ``frames`` and ``size`` are what it is trained, served and counted at; ``forward`` takes any T.

FLOPs are MACs (conv + linear; the shift is free). At 8×224², 174 classes: TSN/TSM-R50 32.70 G, 23.86 M
parameters; TSN/TSM-R18 14.51 G, 11.27 M. At 8×256²: TSN-R50 42.71 G. The papers give 33.0 G and 43.0 G
(ResNet-50's 4.1 G a frame × 8, rounded: −0.9% and −0.7%) and 24.3 M parameters, which is the count with
a 400-class (Kinetics) classifier: 24.33 M here. Tests check the exact figures and the papers' within 3%.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from clipwise.models.base import ClipModelConfig, VideoClassifier
from clipwise.models.folding import FoldCache
from clipwise.models.registry import register_preset

STANDARD_LAYERS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}
SMALL = {"width": 32, "layers": (2, 2, 2, 2), "size": 112}  # the ``_small`` presets' changes to a paper one


@dataclass
class TSNConfig(ClipModelConfig):
    """A TSN (``temporal_shift=False``) or TSM on a ResNet-18/50 of any base width and depth per stage."""

    num_classes: int = 174
    depth: int = 50  # 18: BasicBlock, 50: Bottleneck
    width: int = 64  # channels of the stem and of the first stage's 3x3 convs
    layers: tuple[int, ...] | None = None  # blocks per stage; None: those of ResNet-18 / ResNet-50
    temporal_shift: bool = False  # TSM
    shift_div: int = 8  # TSM shifts 1/shift_div of the channels each way
    shift_shortcut: bool = False  # a block's downsample reads the shifted input (the AdaFuse authors' TSM)
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.depth not in STANDARD_LAYERS:
            raise ValueError(f"depth must be one of {sorted(STANDARD_LAYERS)}, got {self.depth}")
        self.layers = tuple(self.layers or STANDARD_LAYERS[self.depth])  # a manifest's JSON list too


class TemporalShift(nn.Module):
    """Bidirectional shift along time of a (N·T, C, H, W) batch of frames, zero padded at the clip ends."""

    def __init__(self, shift_div: int = 8) -> None:
        super().__init__()
        self.shift_div = shift_div

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        clips = x.view(-1, frames, *x.shape[1:])
        fold = x.shape[1] // self.shift_div
        out = torch.zeros_like(clips)
        out[:, :-1, :fold] = clips[:, 1:, :fold]  # frame t takes t+1: features move back in time
        out[:, 1:, fold : 2 * fold] = clips[:, :-1, fold : 2 * fold]  # frame t takes t-1
        out[:, :, 2 * fold :] = clips[:, :, 2 * fold :]
        return out.view_as(x)

    def extra_repr(self) -> str:
        return f"shift_div={self.shift_div}"


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class ResidualBlock(nn.Module):
    """A residual block on frames: ``relu(branch(shift(x)) + shortcut(x))``; subclasses define the branch.

    At inference (eval, no autograd) it runs ``folded``: every convolution with its batch norm folded in and,
    on the CPU, its ReLU and the residual sum fused (``clipwise.models.folding``), as AdaFuse's gated blocks run.
    """

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, shift_div: int, shift_shortcut: bool = False) -> None:
        super().__init__()
        self.out_channels = width * self.expansion
        self.shift = TemporalShift(shift_div) if shift_div else None
        self.shift_shortcut = shift_shortcut
        self.downsample = _downsample(in_channels, self.out_channels, stride)
        self.relu = nn.ReLU(inplace=True)
        self._folded = FoldCache()

    def branch(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """The residual branch without its final ReLU (frames: per clip, for blocks that mix time)."""
        raise NotImplementedError

    def folded(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """``relu(branch(x) + shortcut)`` with folded, fused convolutions (inference)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            return self.through_modules(x, frames)
        shifted = x if self.shift is None else self.shift(x, frames)
        shortcut = x if self.downsample is None else self._folded(*self.downsample).dense(self.projected(x, shifted))
        return self.folded(shifted, shortcut)

    def projected(self, x: torch.Tensor, shifted: torch.Tensor) -> torch.Tensor:
        """What the downsample reads: the block input, or with ``shift_shortcut`` the shifted one, as in the
        AdaFuse authors' TSM (their identity without a downsample stays unshifted)."""
        return shifted if self.shift_shortcut else x

    def through_modules(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """The block module by module (training, and references at inference)."""
        shifted = x if self.shift is None else self.shift(x, frames)
        shortcut = x if self.downsample is None else self.downsample(self.projected(x, shifted))
        return self.relu(self.branch(shifted, frames) + shortcut)


class BasicBlock(ResidualBlock):
    """ResNet-18's block: 3x3 (stride) → 3x3."""

    def __init__(
        self, in_channels: int, width: int, stride: int = 1, shift_div: int = 0, shift_shortcut: bool = False
    ) -> None:
        super().__init__(in_channels, width, stride, shift_div, shift_shortcut)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def branch(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def folded(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        out = self._folded(self.conv1, self.bn1).dense(x, relu=True)
        return self._folded(self.conv2, self.bn2).dense(out, residual=shortcut, relu=True)


class Bottleneck(ResidualBlock):
    """ResNet-50's block, torchvision v1.5: 1x1 → 3x3 (stride) → 1x1 to 4x the width."""

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, stride: int = 1, shift_div: int = 0, shift_shortcut: bool = False
    ) -> None:
        super().__init__(in_channels, width, stride, shift_div, shift_shortcut)
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, self.out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.out_channels)

    def branch(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def folded(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        out = self._folded(self.conv1, self.bn1).dense(x, relu=True)
        out = self._folded(self.conv2, self.bn2).dense(out, relu=True)
        return self._folded(self.conv3, self.bn3).dense(out, residual=shortcut, relu=True)


BlockFactory = Callable[[int, int, int, int, bool], ResidualBlock]
"""Builds a block from (in_channels, width, stride, shift_div, shift_shortcut): a block class, or a partial of one."""


class ResNet2D(nn.Module):
    """A torchvision-style ResNet over frames: (N·T, 3, H, W) → pooled features (N·T, ``out_channels``).

    Stages ``layer1..layer4`` are ``nn.Sequential`` containers of blocks, each called as ``block(x, frames)``.
    """

    def __init__(
        self, block: BlockFactory, layers: Sequence[int], width: int, shift_div: int = 0, shift_shortcut: bool = False
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = width
        for index, blocks in enumerate(layers):
            stage_width, stride = width * 2**index, 1 if index == 0 else 2
            stage = []
            for position in range(blocks):
                stride_here = stride if position == 0 else 1
                stage.append(block(in_channels, stage_width, stride_here, shift_div, shift_shortcut))
                in_channels = stage[-1].out_channels
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
        self.out_channels = in_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self._folded = FoldCache()
        self._init_weights()

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 → BN → ReLU → max pool; at inference, with the BN folded into the conv and the ReLU fused."""
        if self.training or torch.is_grad_enabled():
            return self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.maxpool(self._folded(self.conv1, self.bn1).dense(x, relu=True))

    def stages(self) -> list[nn.Sequential]:
        return [module for name, module in self.named_children() if name.startswith("layer")]

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, frames_batch: torch.Tensor, frames: int) -> torch.Tensor:
        x = self.stem(frames_batch.contiguous(memory_format=torch.channels_last))
        for stage in self.stages():
            for block in stage:
                x = block(x, frames)
        return self.avgpool(x).flatten(1)


def build_backbone(config: TSNConfig, block: BlockFactory | None = None) -> ResNet2D:
    """The ResNet a config describes; ``block`` replaces the depth's block class (AdaFuse's gated blocks)."""
    block = block or (BasicBlock if config.depth == 18 else Bottleneck)
    shift_div = config.shift_div if config.temporal_shift else 0
    return ResNet2D(block, config.layers, config.width, shift_div, config.shift_shortcut)


class TSN(VideoClassifier):
    """TSN / TSM: a 2D ResNet on every frame, a classifier per frame, the average over frames."""

    family = "tsn"
    sampling = "segments"

    def __init__(self, config: TSNConfig, preset: str = "", backbone: ResNet2D | None = None) -> None:
        super().__init__(config, preset)
        self.backbone = backbone or build_backbone(config)
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(self.backbone.out_channels, config.num_classes)
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.zeros_(self.fc.bias)

    def frame_logits(self, clips: torch.Tensor) -> torch.Tensor:
        """Per-frame logits (N, T, K) of (N, 3, T, H, W) clips."""
        n, c, t, h, w = clips.shape
        frames_batch = clips.transpose(1, 2).reshape(n * t, c, h, w)
        features = self.backbone(frames_batch, t)
        return self.fc(self.dropout(features)).view(n, t, -1)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.frame_logits(clips).mean(dim=1)


def _register_presets() -> None:
    """``tsn_r18``, ``tsn_r50``, ``tsm_r18``, ``tsm_r50`` (8×224², Something-Something's 174 classes), their
    ``_tiny`` twins (quarter width, two blocks a stage, 8×64²) and ``_small`` twins (half width, two blocks a
    stage, 8×112²: the smallest size where compute, not per-call overhead, dominates a CPU forward pass)."""
    for method, shift in (("tsn", False), ("tsm", True)):
        for depth in (18, 50):
            name = f"{method}_r{depth}"
            paper = TSNConfig(depth=depth, temporal_shift=shift)
            register_preset(name, TSN, paper)
            register_preset(f"{name}_tiny", TSN, replace(paper, width=16, layers=(2, 2, 2, 2), size=64))
            register_preset(f"{name}_small", TSN, replace(paper, **SMALL))


_register_presets()
