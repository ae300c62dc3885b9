"""X3D and E3D: one family of 3D inverted-bottleneck networks.

A network is a stem, stages of inverted bottlenecks (1×1×1 conv → depthwise kt×k×k conv carrying the
stride → 1×1×1 conv, with a shortcut) and a head (1×1×1 conv → global average pool → FC → FC). An
``X3DConfig`` lists the stages as ``StageSpec(kernel k, temporal_kernel kt, layers, bottleneck,
out_channels, stride)``; X3D and E3D differ only in config values.

X3D (Feichtenhofer, CVPR 2020) follows PySlowFast's ``X3D``:

* stem: 1×3×3 conv 3→24 with spatial stride 2, depthwise 5×1×1 conv, BN, ReLU;
* blocks: BN after every conv; ReLU after the first 1×1×1 conv; after the depthwise 3×3×3 conv a
  squeeze-excitation (ratio 1/16, width rounded like PySlowFast's ``SE._round_width``, ReLU inside) on
  the 1st, 3rd, 5th... block of every stage, then Swish; a 1×1×1 conv + BN projection shortcut where the
  channels or the resolution change; ReLU after the sum. The last BN of a block with a shortcut starts at
  zero (``ZERO_INIT_FINAL_BN``), convs start Kaiming-normal (fan-out), linear layers N(0, 0.01). PyTorchVideo's
  X3D leaves out the BN of a projection shortcut that keeps the width (only the first block of the first stage,
  24 → 24 with stride 2): ``strided_shortcut_norm=False`` builds that (its checkpoints have no tensor for it);
* widths 24/48/96/192, bottlenecks 2.25× (54/108/216/432), depths 3/5/11/7 (S, M: depth factor 2.2) or
  5/10/25/15 (L: 5.0);
* head: 1×1×1 conv to 432, BN, ReLU, pool, bias-free FC (``lin_5``) to 2048, ReLU, dropout 0.5, FC;
* clips: S 13 frames every 6th at 160², M 16 every 5th at 224², L 16 every 5th at 312².

E3D (Wang et al., ICLR 2023, Table 9 and the authors' code) has the 1×3×3 stem conv only; a block keeps
a residual only when its input and output channels match (average-pooled 1×2×2 when the block strides),
never a projection; "SE and ReLU are added for training" (Appendix F): ReLU everywhere in the blocks;
head 1×1×1 conv to 512, pool, FC to 2048, Swish, dropout 0.2, FC (the authors' deploy ``Cnn3DNet``).
Where the paper is silent (where the SE sits, its ratio, the zero-initialised last BN, the bias-free
hidden FC) E3D does what X3D does. The ``e3d`` preset builds a ``clipwise search e3d`` result:
``create_model("e3d", arch="arch.json")`` reads the stem, stages and head width from the file (frames, size
and classes stay the config's: pass those the search used); the resolved config holds them, so a
checkpoint's manifest rebuilds the network without the file.

FLOPs (MACs of every conv and linear layer, SE and shortcut projections included), 400 classes:
X3D-S 13×160² 1.963 G / 3.794 M params, X3D-M 16×224² 4.732 G / 3.794 M, X3D-L 16×312² 18.368 G / 6.153 M
(PySlowFast model zoo: 1.96 / 4.73 / 18.37 G, 3.8 / 3.8 / 6.2 M). E3D-S 13×160² 1.866 G / 3.942 M, E3D-M
16×224² 4.645 G / 3.840 M, E3D-L 16×312² 18.343 G / 6.282 M (paper 1.9 / 4.7 / 18.3 G). The SEs' FCs add
0.1–0.3 M MACs, under 0.02 %, so either convention gives the papers' figures; the independent E3D count
(1.864 / 4.643 / 18.340 G) leaves out the two FCs after the pool and the SEs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from clipwise.models.base import ClipModelConfig, VideoClassifier
from clipwise.models.layers import FrameConv3d
from clipwise.models.registry import register_preset
from clipwise.models.resnet3d import init_weights

Activation = Literal["relu", "swish"]
ARCH_FIELDS = ("stem_channels", "stages", "head_channels")  # what an arch file (a search result) sets


@dataclass(frozen=True)
class StageSpec:
    """A stage of ``layers`` identical inverted bottlenecks; the first strides and changes the width."""

    kernel: int  # spatial size k of the depthwise conv
    temporal_kernel: int  # temporal size kt of the depthwise conv
    layers: int
    bottleneck: int  # channels of the depthwise conv
    out_channels: int
    stride: int = 1  # spatial stride of the first block

    def __post_init__(self) -> None:
        if self.kernel % 2 == 0 or self.temporal_kernel % 2 == 0:
            raise ValueError(f"kernels must be odd, got {self.temporal_kernel}x{self.kernel}x{self.kernel}")
        if min(self.kernel, self.temporal_kernel, self.layers, self.bottleneck, self.out_channels, self.stride) < 1:
            raise ValueError(f"stage sizes must be positive: {self}")


@dataclass
class X3DConfig(ClipModelConfig):
    """An X3D / E3D network; the defaults are X3D-S's but for ``stages``."""

    frames: int = 13
    size: int = 160
    sample_stride: int = 6  # dense sampling: one frame out of every sample_stride
    stem_channels: int = 24
    stem_temporal_kernel: int | None = 5  # depthwise kt×1×1 conv after the 1×3×3 stem conv (None: none)
    stages: tuple[StageSpec, ...] = ()
    head_channels: int = 432  # the 1×1×1 conv before the pool
    hidden_channels: int = 2048  # the FC after the pool
    se_ratio: float = 1 / 16  # squeeze-excitation on every other block (0: none)
    depthwise_activation: Activation = "swish"
    hidden_activation: Activation = "relu"
    projection_shortcuts: bool = True  # X3D: 1×1×1 projection; E3D: residual only where the channels match
    strided_shortcut_norm: bool = True  # BN after a projection that keeps the width (PyTorchVideo's X3D: none)
    dropout: float = 0.5
    arch: str | None = None  # JSON written by `clipwise search e3d`

    def __post_init__(self) -> None:
        self.stages = tuple(stage if isinstance(stage, StageSpec) else StageSpec(**stage) for stage in self.stages)

    def resolved(self) -> X3DConfig:
        """This config with the stem, stages and head width of its ``arch`` file, if it names one."""
        if self.arch is None:
            return self
        architecture = json.loads(Path(self.arch).read_text())["architecture"]
        unknown = set(architecture) - set(ARCH_FIELDS)
        if unknown:
            raise ValueError(f"{self.arch}: unknown architecture fields {sorted(unknown)}")
        return replace(self, arch=None, **architecture)


def architecture_of(config: X3DConfig) -> dict:
    """The JSON-ready ``architecture`` entry of an arch file describing ``config``'s network."""
    values = {name: getattr(config, name) for name in ARCH_FIELDS}
    return {**values, "stages": [asdict(stage) for stage in config.stages]}


def conv_output_size(size: int, kernel: int, stride: int) -> int:
    """Output length of a 'same'-padded conv (padding kernel // 2) along one axis."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def se_width(channels: int, ratio: float, divisor: int = 8) -> int:
    """Hidden width of a squeeze-excitation, rounded as PySlowFast's ``SE._round_width``."""
    width = channels * ratio
    rounded = max(divisor, int(width + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * width else rounded


def has_squeeze_excite(config: X3DConfig, block_index: int) -> bool:
    """PySlowFast puts the SE on the 1st, 3rd, 5th... block of every stage."""
    return config.se_ratio > 0 and block_index % 2 == 0


def activation(name: Activation) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "relu" else nn.SiLU(inplace=True)


def conv3d(
    in_channels: int, out_channels: int, kernel: tuple[int, int, int], stride: int = 1, groups: int = 1
) -> FrameConv3d:
    """A bias-free 'same'-padded conv with a spatial stride."""
    padding = tuple(k // 2 for k in kernel)
    return FrameConv3d(in_channels, out_channels, kernel, (1, stride, stride), padding, groups=groups, bias=False)


class SqueezeExcite(nn.Module):
    """Channel gates from the clip's pooled features: pool → 1×1×1 conv → ReLU → 1×1×1 conv → sigmoid."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__()
        hidden = se_width(channels, ratio)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.reduce = FrameConv3d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.expand = FrameConv3d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(self.relu(self.reduce(self.pool(x)))))


def _shortcut(in_channels: int, out_channels: int, stride: int, config: X3DConfig) -> nn.Module | None:
    """X3D: identity or a 1×1×1 projection + BN (no BN when it keeps the width and ``strided_shortcut_norm`` is
    off); E3D: identity (pooled on stride) or no residual at all."""
    if in_channels == out_channels and stride == 1:
        return nn.Identity()
    if config.projection_shortcuts:
        projection = conv3d(in_channels, out_channels, (1, 1, 1), stride)
        if in_channels == out_channels and not config.strided_shortcut_norm:
            return nn.Sequential(projection)
        return nn.Sequential(projection, nn.BatchNorm3d(out_channels))
    if in_channels == out_channels:
        return nn.AvgPool3d((1, stride, stride), (1, stride, stride), ceil_mode=True)
    return None


class InvertedBottleneck(nn.Module):
    """1×1×1 → depthwise kt×k×k (stride) → [SE] → 1×1×1, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, spec: StageSpec, stride: int, squeeze_excite: bool, config: X3DConfig):
        super().__init__()
        width, kernel = spec.bottleneck, (spec.temporal_kernel, spec.kernel, spec.kernel)
        self.expand = nn.Sequential(conv3d(in_channels, width, (1, 1, 1)), nn.BatchNorm3d(width), nn.ReLU(inplace=True))
        self.depthwise = nn.Sequential(conv3d(width, width, kernel, stride, groups=width), nn.BatchNorm3d(width))
        self.squeeze_excite = SqueezeExcite(width, config.se_ratio) if squeeze_excite else nn.Identity()
        self.depthwise_act = activation(config.depthwise_activation)
        self.project = nn.Sequential(conv3d(width, spec.out_channels, (1, 1, 1)), nn.BatchNorm3d(spec.out_channels))
        self.shortcut = _shortcut(in_channels, spec.out_channels, stride, config)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise_act(self.squeeze_excite(self.depthwise(self.expand(x)))))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)


def build_stage(in_channels: int, spec: StageSpec, config: X3DConfig) -> nn.Sequential:
    """The blocks of one stage: the first takes ``in_channels`` and the stride."""
    blocks = [
        InvertedBottleneck(
            in_channels if index == 0 else spec.out_channels,
            spec,
            spec.stride if index == 0 else 1,
            has_squeeze_excite(config, index),
            config,
        )
        for index in range(spec.layers)
    ]
    return nn.Sequential(*blocks)


def build_stem(config: X3DConfig) -> nn.Sequential:
    """1×3×3 conv with spatial stride 2, [depthwise kt×1×1 conv], BN, ReLU."""
    channels = config.stem_channels
    layers: list[nn.Module] = [conv3d(3, channels, (1, 3, 3), stride=2)]
    if config.stem_temporal_kernel is not None:
        layers.append(conv3d(channels, channels, (config.stem_temporal_kernel, 1, 1), groups=channels))
    return nn.Sequential(*layers, nn.BatchNorm3d(channels), nn.ReLU(inplace=True))


class Head(nn.Module):
    """1×1×1 conv, BN, ReLU, global average pool, FC to the hidden width, activation, dropout, FC."""

    def __init__(self, in_channels: int, config: X3DConfig) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            conv3d(in_channels, config.head_channels, (1, 1, 1)),
            nn.BatchNorm3d(config.head_channels),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.hidden = nn.Linear(config.head_channels, config.hidden_channels, bias=False)
        self.hidden_act = activation(config.hidden_activation)
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(config.hidden_channels, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv(x)).flatten(1)
        return self.fc(self.dropout(self.hidden_act(self.hidden(x))))


class X3D(VideoClassifier):
    """An X3D or E3D network (see the module docstring); ``config.arch`` builds a search result."""

    family = "x3d"
    sampling = "dense"

    def __init__(self, config: X3DConfig, preset: str = "") -> None:
        config = config.resolved()
        if not config.stages:
            raise ValueError("no stages: give stages=..., or arch=PATH written by `clipwise search e3d`")
        super().__init__(config, preset)
        self.stem = build_stem(config)
        stages, in_channels = [], config.stem_channels
        for spec in config.stages:
            stages.append(build_stage(in_channels, spec, config))
            in_channels = spec.out_channels
        self.stages = nn.Sequential(*stages)
        self.head = Head(in_channels, config)
        branch_ends = (
            block.project[1]
            for block in self.stages.modules()
            if isinstance(block, InvertedBottleneck) and block.shortcut is not None
        )
        init_weights(self, branch_ends)  # PySlowFast's init_weights(fc_init_std=0.01, zero_init_final_bn=True)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(clips)))


def _stages(*rows: tuple[int, int, int, int, int, int]) -> tuple[StageSpec, ...]:
    """Stages from rows of (k, kt, layers, bottleneck, out channels, stride), as the E3D paper lists them."""
    return tuple(StageSpec(*row) for row in rows)


X3D_WIDTHS = (24, 48, 96, 192)


def x3d_stages(depths: Iterable[int]) -> tuple[StageSpec, ...]:
    """X3D's stages: 3×3×3 depthwise convs, bottleneck 2.25× the width, every stage striding."""
    return _stages(
        *((3, 3, layers, int(2.25 * width), width, 2) for width, layers in zip(X3D_WIDTHS, depths, strict=True))
    )


X3D_S = X3DConfig(stages=x3d_stages((3, 5, 11, 7)))
X3D_M = replace(X3D_S, frames=16, size=224, sample_stride=5)
X3D_L = replace(X3D_M, size=312, stages=x3d_stages((5, 10, 25, 15)))

E3D = X3DConfig(
    stem_temporal_kernel=None,
    head_channels=512,
    depthwise_activation="relu",
    hidden_activation="swish",
    projection_shortcuts=False,
    dropout=0.2,
)
E3D_S = replace(
    E3D,
    stages=_stages(
        (5, 1, 3, 32, 24, 2),
        (3, 3, 6, 96, 48, 2),
        (3, 3, 6, 176, 120, 2),
        (3, 3, 6, 176, 120, 1),
        (3, 3, 6, 384, 256, 2),
    ),
)
E3D_M = replace(
    E3D,
    frames=16,
    size=224,
    sample_stride=5,
    stages=_stages(
        (5, 1, 3, 32, 24, 2),
        (3, 3, 6, 96, 64, 2),
        (3, 3, 6, 176, 120, 2),
        (3, 3, 6, 176, 120, 1),
        (3, 3, 6, 464, 184, 2),
    ),
)
E3D_L = replace(
    E3D_M,
    size=312,
    stages=_stages(
        (5, 1, 3, 32, 24, 2),
        (3, 3, 13, 120, 48, 2),
        (3, 3, 13, 176, 120, 2),
        (3, 3, 13, 176, 120, 1),
        (3, 3, 13, 480, 192, 2),
    ),
)


def tiny(config: X3DConfig, size: int) -> X3DConfig:
    """A twin for tests and the bundled defaults: the same kernels and strides at half the widths (multiples
    of 8), a quarter of the blocks (at least one a stage), a 512-wide hidden FC, 8 frames of ``size``²."""

    def halve(channels: int) -> int:
        return max(8, round(channels / 16) * 8)

    stages = tuple(
        replace(s, layers=-(-s.layers // 4), bottleneck=halve(s.bottleneck), out_channels=halve(s.out_channels))
        for s in config.stages
    )
    return replace(
        config,
        frames=8,
        size=size,
        stem_channels=halve(config.stem_channels),
        stages=stages,
        head_channels=halve(config.head_channels),
        hidden_channels=512,
    )


def _register_presets() -> None:
    """The paper presets (400 Kinetics classes), their ``_tiny`` twins, and ``e3d`` for search results."""
    presets = {"x3d_s": X3D_S, "x3d_m": X3D_M, "x3d_l": X3D_L, "e3d_s": E3D_S, "e3d_m": E3D_M, "e3d_l": E3D_L}
    tiny_sizes = {"s": 64, "m": 96, "l": 128}  # 0.4× the paper's input, rounded to a multiple of 32
    for name, config in presets.items():
        register_preset(name, X3D, config)
        register_preset(f"{name}_tiny", X3D, tiny(config, tiny_sizes[name[-1]]))
    register_preset("e3d", X3D, E3D, requires=("arch",))


_register_presets()
