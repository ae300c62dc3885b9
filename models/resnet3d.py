"""I3D-R50 and Slow-only-R50 as PySlowFast builds them, with per-stage 2D switching for Ada3D.

Architecture (PySlowFast ``stem_helper`` / ``resnet_helper``, ResNet-50 depths 3-4-6-3):

* ``stem``: kt×7×7 conv to 64 channels with stride 1×2×2 (kt = 5 for I3D, 1 for Slow-only), BN, ReLU, then a
  1×3×3 max pool with stride 1×2×2;
* ``stages`` (res2..res5): bottlenecks ``conv1`` kt×1×1 → ``conv2`` 1×3×3 (carries the spatial stride of the
  first block of res3..res5) → ``conv3`` 1×1×1, inner widths 64..512 and outputs 4× that, with a strided
  1×1×1 projection (``downsample``) wherever the shape changes. The temporal kernel sits on ``conv1`` only
  (PySlowFast's factorisation, the one the Ada3D paper uses), following a per-stage pattern cycled over the
  blocks: I3D res2 [3], res3 [3, 1], res4 [3, 1], res5 [1, 3]; Slow-only [1], [1], [3], [3];
* ``head``: global average pool, dropout 0.5, linear (logits; PySlowFast's test-time softmax is left out).

Every conv is a ``clipwise.models.layers.FrameConv3d``: on CPU, kernels one frame deep (and the centre slices below) run
as 2D convs over the frames, which keeps batch-1 clips on PyTorch's fast kernels.

By default nothing pools or strides in time: T frames go in and T frames come out of every stage. PySlowFast's
``i3d`` arch adds a 2×1×1 max pool after res2; its ``i3d_nopool`` / ``slow_i3d`` variant, built by the presets,
is the one whose cost matches the Ada3D paper (58.6 GFLOPs at 8×256², 200 classes), and it runs on any number of
frames, which Ada3D needs when it drops frames. Three config fields build what published checkpoints were
trained as (``clipwise import``): ``res2_temporal_pool``, that 2×1×1 max pool with stride 2 after res2
(PySlowFast's ``i3d``, PyTorchVideo's ``i3d_r50``, mmaction2's I3D: 28.4 GFLOPs at 8×224², 400 classes), and
``stem_temporal_stride`` / ``stem_pool_temporal_stride``, temporal strides of the stem's conv and max pool
(mmaction2's I3D: 2 and 2 on 32-frame clips).

Where the papers are silent, PySlowFast's choices: dense sampling of T frames with a stride of 8 frames (its
8×8 recipe, which the Ada3D paper uses for both backbones at 8 and 16 frames); test-time short side equal to
the crop size; MSRA (fan-out) init, BN γ = 1 except the last BN of each block (γ = 0), head N(0, 0.01).

Ada3D API (``clipwise.models.ada3d`` builds on it):

* ``model.trunk``: ``[stem, res2, res3, res4, res5]``; each is called as ``stage(x, temporal=True)``.
* ``model.switchable_stages``: indices into ``trunk`` of the stages with temporal kernels, the "3D stages"
  an Ada3D policy switches (I3D: 0..4, K = 5; Slow-only: 3 and 4, K = 2).
* ``model(clips, stages_3d=[...])``: one flag per switchable stage, shared by the clips of the batch (run
  clips with different policies as separate batches); a stage whose flag is false runs every temporal kernel
  as its centre temporal slice, a real 1×k×k conv (``centre_slice_conv3d``), counted as such. Clips may have
  any number of frames.
* ``centre_slice_copy(module)`` and ``model.static_copy(stages_3d)``: copies in which those kernels are
  materialised as 1×k×k ``FrameConv3d`` layers, the static network a policy executes (reference counts, export).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from clipwise.models.base import ClipModelConfig, Preprocessing, VideoClassifier
from clipwise.models.flops import conv_macs, record_macs
from clipwise.models.layers import FrameConv3d, frame_conv3d
from clipwise.models.registry import register_preset

Kernel3d = tuple[int, int, int]
# Builds the module that replaces a bottleneck's conv2 + bn2, from (block index in its stage, inner width).
SpatialOpFactory = Callable[[int, int], nn.Module | None]

# conv1 temporal kernels of res2..res5, each pattern cycled over the blocks of its stage (PySlowFast).
I3D_TEMPORAL_KERNELS = ((3,), (3, 1), (3, 1), (1, 3))
SLOWONLY_TEMPORAL_KERNELS = ((1,), (1,), (3,), (3,))


def conv3d(
    in_channels: int, out_channels: int, kernel: Kernel3d, stride: Kernel3d = (1, 1, 1), groups: int = 1
) -> FrameConv3d:
    """Bias-free conv with "same" padding (k // 2 in each dimension), the only kind these networks use."""
    padding = tuple(k // 2 for k in kernel)
    return FrameConv3d(in_channels, out_channels, kernel, stride=stride, padding=padding, groups=groups, bias=False)


def is_temporal(module: nn.Module) -> bool:
    """True for a 3D conv whose kernel spans more than one frame."""
    return isinstance(module, nn.Conv3d) and module.kernel_size[0] > 1


def _centre_slice(conv: nn.Conv3d) -> tuple[torch.Tensor, Kernel3d]:
    """The centre temporal tap of ``conv``'s kernel and the padding that makes it a 1×k×k conv."""
    kt = conv.kernel_size[0]
    if conv.stride[0] != 1 or conv.dilation[0] != 1 or conv.padding[0] != kt // 2:
        raise ValueError(f"centre slicing needs temporal stride 1, dilation 1 and padding kt // 2: {conv}")
    centre = kt // 2
    return conv.weight[:, :, centre : centre + 1], (0, conv.padding[1], conv.padding[2])


def centre_slice_conv3d(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """Run ``conv`` with only the centre temporal slice of its kernel, as a 1×k×k conv, and record its MACs.

    Equals ``conv`` with its other temporal taps zeroed, at the cost of the 1×k×k conv alone, which runs as a 2D
    conv over the frames (``clipwise.models.layers.frame_conv3d``).
    """
    weight, padding = _centre_slice(conv)
    out = frame_conv3d(x, weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups)
    record_macs(conv_macs(out.shape, conv.in_channels // conv.groups, tuple(weight.shape[2:])))
    return out


def _sliced_conv(conv: nn.Conv3d) -> FrameConv3d:
    """A new 1×k×k conv holding the centre temporal slice of ``conv``."""
    weight, padding = _centre_slice(conv)
    sliced = FrameConv3d(
        conv.in_channels,
        conv.out_channels,
        tuple(weight.shape[2:]),
        stride=conv.stride,
        padding=padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    ).to(weight)
    sliced.load_state_dict(dict(conv.state_dict(), weight=weight))
    return sliced


def _slice_temporal_convs(module: nn.Module) -> None:
    """Replace, in place, every temporal conv inside ``module`` by its centre slice, a 1×k×k conv."""
    for name in [name for name, child in module.named_modules() if is_temporal(child)]:
        parent, _, attribute = name.rpartition(".")
        setattr(module.get_submodule(parent), attribute, _sliced_conv(module.get_submodule(name)))


def centre_slice_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in which every temporal conv is replaced by its centre slice, a 1×k×k conv."""
    module = copy.deepcopy(module)
    _slice_temporal_convs(module)
    return module


def run_conv(conv: nn.Module, x: torch.Tensor, temporal: bool) -> torch.Tensor:
    """``conv(x)``, or its centre temporal slice when ``temporal`` is off and ``conv`` spans several frames."""
    if temporal or not is_temporal(conv):
        return conv(x)
    return centre_slice_conv3d(conv, x)


class Stem(nn.Module):
    """kt×7×7 conv with spatial stride 2, BN, ReLU, 1×3×3 max pool with spatial stride 2 (temporal strides: 1
    unless given)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temporal_kernel: int,
        temporal_stride: int = 1,
        pool_temporal_stride: int = 1,
    ) -> None:
        super().__init__()
        self.conv = conv3d(in_channels, out_channels, (temporal_kernel, 7, 7), stride=(temporal_stride, 2, 2))
        self.bn = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool3d((1, 3, 3), stride=(pool_temporal_stride, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor, temporal: bool = True) -> torch.Tensor:
        return self.pool(self.relu(self.bn(run_conv(self.conv, x, temporal))))


class Bottleneck(nn.Module):
    """ResNet bottleneck: kt×1×1 ``conv1`` → 1×3×3 ``conv2`` (spatial stride) → 1×1×1 ``conv3``, plus shortcut.

    ``spatial`` replaces ``conv2`` and ``bn2`` (then an identity) with another module of the same shape, such
    as CT-Net's CT-Module; it must keep the spatial size.
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        out_channels: int,
        stride: int = 1,
        temporal_kernel: int = 1,
        spatial: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3d(in_channels, width, (temporal_kernel, 1, 1))
        self.bn1 = nn.BatchNorm3d(width)
        if spatial is None:
            self.conv2: nn.Module = conv3d(width, width, (1, 3, 3), stride=(1, stride, stride))
            self.bn2: nn.Module = nn.BatchNorm3d(width)
        elif stride == 1:
            self.conv2, self.bn2 = spatial, nn.Identity()
        else:
            raise ValueError("a replacement for conv2 cannot carry a stride")
        self.conv3 = conv3d(width, out_channels, (1, 1, 1))
        self.bn3 = nn.BatchNorm3d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                conv3d(in_channels, out_channels, (1, 1, 1), stride=(1, stride, stride)), nn.BatchNorm3d(out_channels)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, temporal: bool = True) -> torch.Tensor:
        out = self.relu(self.bn1(run_conv(self.conv1, x, temporal)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResStage(nn.Sequential):
    """A sequence of bottlenecks, all run in 3D or all with centre-sliced temporal kernels."""

    def forward(self, x: torch.Tensor, temporal: bool = True) -> torch.Tensor:
        for block in self:
            x = block(x, temporal=temporal)
        return x


def make_stages(
    in_channels: int,
    widths: Sequence[int],
    depths: Sequence[int],
    temporal_kernels: Sequence[Sequence[int]],
    expansion: int = 4,
    spatial_op: SpatialOpFactory | None = None,
) -> nn.ModuleList:
    """ResNet stages res2, res3, ... of bottlenecks; each stage after the first halves the spatial size.

    ``temporal_kernels[s]`` is the pattern of ``conv1`` temporal kernels of stage ``s``, cycled over its
    blocks (PySlowFast). ``spatial_op(block_index, width)`` may return a module replacing a block's conv2.
    """
    stages = []
    for stage_index, (width, depth, pattern) in enumerate(zip(widths, depths, temporal_kernels, strict=True)):
        out_channels = width * expansion
        blocks = []
        for block_index in range(depth):
            blocks.append(
                Bottleneck(
                    in_channels,
                    width,
                    out_channels,
                    stride=2 if stage_index > 0 and block_index == 0 else 1,
                    temporal_kernel=pattern[block_index % len(pattern)],
                    spatial=spatial_op(block_index, width) if spatial_op else None,
                )
            )
            in_channels = out_channels
        stages.append(ResStage(*blocks))
    return nn.ModuleList(stages)


class ClassifierHead(nn.Module):
    """Global average pool over time and space, dropout, linear."""

    def __init__(self, in_features: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(x).flatten(1)))


def init_weights(model: nn.Module, final_bns: Iterable[nn.BatchNorm3d] = ()) -> None:
    """PySlowFast init: MSRA fan-out convs, BN γ = 1, zero biases, head N(0, 0.01); then γ = 0 on
    ``final_bns`` (``zero_init_final_bn``: each residual branch's last BN, so blocks start as identities)."""
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm3d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
        if isinstance(module, nn.Conv3d | nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    for bn in final_bns:
        nn.init.zeros_(bn.weight)


@dataclass
class ResNet3DConfig(ClipModelConfig):
    """A PySlowFast ResNet: stem temporal kernel, per-stage widths, depths and conv1 temporal patterns."""

    stem_width: int = 64
    stem_temporal_kernel: int = 5
    widths: tuple[int, ...] = (64, 128, 256, 512)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    temporal_kernels: tuple[tuple[int, ...], ...] = I3D_TEMPORAL_KERNELS
    expansion: int = 4
    dropout: float = 0.5
    sample_stride: int = 8  # PySlowFast's 8x8 sampling
    stem_temporal_stride: int = 1  # of the stem conv (mmaction2's I3D: 2)
    stem_pool_temporal_stride: int = 1  # of the stem max pool (mmaction2's I3D: 2)
    res2_temporal_pool: bool = False  # 2×1×1 max pool, stride 2, after res2 (PySlowFast's i3d arch)


class ResNet3D(VideoClassifier):
    """I3D / Slow-only ResNet (PySlowFast), with stages switchable to their centre temporal slices."""

    family = "resnet3d"
    sampling = "dense"

    def __init__(self, config: ResNet3DConfig, preset: str = "") -> None:
        super().__init__(config, preset)
        strides = (config.stem_temporal_stride, config.stem_pool_temporal_stride)
        self.stem = Stem(3, config.stem_width, config.stem_temporal_kernel, *strides)
        self.stages = make_stages(
            config.stem_width, config.widths, config.depths, config.temporal_kernels, config.expansion
        )
        self.res2_pool = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1)) if config.res2_temporal_pool else None
        self.head = ClassifierHead(config.widths[-1] * config.expansion, config.num_classes, config.dropout)
        init_weights(self, (block.bn3 for block in self.modules() if isinstance(block, Bottleneck)))
        self.switchable_stages = tuple(
            index for index, stage in enumerate(self.trunk) if any(map(is_temporal, stage.modules()))
        )

    @property
    def trunk(self) -> list[nn.Module]:
        """Stem and res2..res5 in order; each takes ``(x, temporal=True)``."""
        return [self.stem, *self.stages]

    def forward(self, clips: torch.Tensor, stages_3d: Sequence[bool] | None = None) -> torch.Tensor:
        """Logits of (N, 3, T, H, W) clips; ``stages_3d`` (one flag per switchable stage) turns stages to 2D."""
        x = clips
        for index, (stage, temporal) in enumerate(zip(self.trunk, self._temporal_flags(stages_3d), strict=True)):
            x = stage(x, temporal=temporal)
            if index == 1 and self.res2_pool is not None:  # trunk[1] is res2
                x = self.res2_pool(x)
        return self.head(x)

    def _temporal_flags(self, stages_3d: Sequence[bool] | None) -> list[bool]:
        flags = [True] * len(self.trunk)
        if stages_3d is None:
            return flags
        if len(stages_3d) != len(self.switchable_stages):
            raise ValueError(f"expected {len(self.switchable_stages)} stage flags, got {len(stages_3d)}")
        for index, on in zip(self.switchable_stages, stages_3d, strict=True):
            flags[index] = bool(on)
        return flags

    def static_copy(self, stages_3d: Sequence[bool]) -> ResNet3D:
        """The static network that ``self(clips, stages_3d)`` executes: switched-off stages as 1×k×k convs."""
        static = copy.deepcopy(self)
        for stage, temporal in zip(static.trunk, self._temporal_flags(stages_3d), strict=True):
            if not temporal:
                _slice_temporal_convs(stage)
        return static

    def preprocessing(self) -> Preprocessing:
        """PySlowFast testing: the short side is scaled to the crop size."""
        preprocessing = super().preprocessing()
        return replace(preprocessing, short_side=preprocessing.crop_size)


# Tiny twins keep the layout (two blocks a stage shows the alternating patterns) at a quarter of the width.
_TINY = {"stem_width": 16, "widths": (16, 32, 64, 128), "depths": (1, 2, 2, 2), "size": 64}

# Paper presets: the Ada3D setting (Mini-Kinetics / ActivityNet: 200 classes, 8 frames, 256² test crops).
register_preset("i3d_r50", ResNet3D, ResNet3DConfig(num_classes=200, size=256))
register_preset(
    "slowonly_r50",
    ResNet3D,
    ResNet3DConfig(num_classes=200, size=256, stem_temporal_kernel=1, temporal_kernels=SLOWONLY_TEMPORAL_KERNELS),
)
register_preset("i3d_r50_tiny", ResNet3D, ResNet3DConfig(**_TINY))
register_preset(
    "slowonly_r50_tiny",
    ResNet3D,
    ResNet3DConfig(stem_temporal_kernel=1, temporal_kernels=SLOWONLY_TEMPORAL_KERNELS, **_TINY),
)
