"""AdaFuse (Meng et al., ICLR 2021): per-channel keep / reuse / skip between conv1 and conv2 of every block.

Each gated block of a TSN / TSM ResNet gets a policy net. For frame t it reads the global-average-pooled
block input of frames t−1 (zeros before the first frame) and t: FC → BatchNorm1d → ReLU → FC to three
logits per conv1 output channel. *Keep* uses conv1's output of frame t, *reuse* copies the channel of conv1's
output of frame t−1 (after its BN and ReLU, as computed there, not as fused there), *skip* gives zeros.
conv2 then reads the fused map. The blocks are the backbone's own (``models.tsn``): each chosen block is
replaced by an :class:`AdaFuseBlock` that takes over its modules under their names, so TSN / TSM weights
load as they are and only ``*.policy.*`` is new.

Training: hard Gumbel-softmax with straight-through gradients at τ = 0.67, executed densely: conv1 over all
channels, the output multiplied by the keep mask plus the previous frame's times the reuse mask. The loss
CE + λ·GFLOPs (Eq. 6) reads :meth:`AdaFuse.policy_gflops` after a forward: the per-clip GFLOPs of that
forward's policy by Eq. 5, differentiable in the masks.

Inference: the decision is the argmax. The authors' code keeps Gumbel sampling at test time and computes
every channel densely, then multiplies by the masks. Here the gated blocks execute only what the policy
keeps (:func:`gated_conv_pair`): conv1 computes channel i of frame t only if it is kept at t or reused at
t+1 (gathered weight rows), conv2 reads only the channels not skipped at t (gathered weight columns); an
all-skipped frame gives conv2's bias without a convolution. Frames that share a channel set run as one
batch; conv1's output is ordered so that a frame's kept channels and those the next frame reuses are both
slices. The executed MACs are reported per clip through ``models.flops.record_macs`` and equal Eq. 5 for
the same policy. Every convolution of a block runs with its batch norm folded in, channels_last, and on
the CPU as one oneDNN primitive with its ReLU and the residual sum fused (the kernel torch.compile emits);
the full-compute policy takes the same path, so that the two compare like for like.

Choices where the paper is silent, following the authors' code (``ops/batenet.py``, ``ops/utils.py``):

* the policy input is the residual branch's input, i.e. after TSM's shift;
* hidden width ``hidden_quota // block width`` (196608: 3072 … 384 for ResNet-50), FC weights N(0, 0.001);
* ``share_policy_fcs``: the blocks of a stage with equal (input, width) share the two FCs, each with its own
  BatchNorm1d (their ``--shared_policy_net``). AdaFuse-TSN-R50 then has 23.86 M + 13.82 M = 37.68 M
  parameters at 174 classes, the paper's 37.7 M; unshared policy nets would make it 54.9 M;
* TSM+Last gates only the last stage (``layer4``, their ``--enabled_stages 3``) with 1024 hidden units and
  unshared FCs (their training script and Table 7).

One refinement of Eq. 5: a *reuse* at the first frame copies zeros (no frame before it), so it is executed,
counted and reported as a *skip*. The authors' count charges conv2 for it. Everything else is Eq. 5 as
printed: MACs of conv1 (all frames, channel i at t when kept at t or reused at t+1) + conv2 (input channels
not skipped at t), on top of the layers the policy does not touch and the policy nets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from models.base import forced_on, forcing
from models.flops import conv_macs, count_flops, record_macs
from models.folding import FoldCache, FoldedConv, conv_output_size
from models.policy import AdaFusePolicy, ChannelUsage
from models.registry import register_preset
from models.tsn import TSN, Bottleneck, ResidualBlock, ResNet2D, TSNConfig, build_backbone

KEEP, REUSE, SKIP = 0, 1, 2
DECISIONS = 3


@dataclass
class AdaFuseConfig(TSNConfig):
    """A TSN / TSM ResNet whose blocks in ``gated_stages`` (1 = layer1 … 4 = layer4) carry a policy net."""

    gated_stages: tuple[int, ...] = (1, 2, 3, 4)
    hidden_quota: int = 196608  # policy hidden width = hidden_quota // block width ...
    hidden_width: int = 0  # ... unless this is set (TSM+Last: 1024)
    share_policy_fcs: bool = True  # blocks of a stage with equal dimensions share the policy FCs
    tau: float = 0.67  # Gumbel-softmax temperature in training

    def __post_init__(self) -> None:
        super().__post_init__()
        self.gated_stages = tuple(self.gated_stages)

    def policy_hidden(self, block_width: int) -> int:
        return self.hidden_width or max(1, self.hidden_quota // block_width)


# ---------------------------------------------------------------------------------------------------------
# What gated blocks do in the current context, and what they decided.


@dataclass(frozen=True)
class _Directive:
    """What one gated block does in the current context (``models.base.forcing``)."""

    keep_all: bool = False  # full compute: dense conv1 and conv2, nothing gated
    masked: bool = False  # run the dense masked formulation at inference too (the reference)
    codes: torch.Tensor | None = None  # forced decision codes, (T, C) or (N, T, C)


def _directive_of(block: nn.Module) -> _Directive:
    return forced_on(block) or _Directive()


def _directing(changes: Mapping[nn.Module, dict[str, object]]) -> contextlib.AbstractContextManager:
    """Apply each block's changes to its directive inside the block, in this context only."""
    return forcing({block: replace(_directive_of(block), **change) for block, change in changes.items()})


@dataclass
class BlockDecisions:
    """One gated block's policy for a batch and the per-frame MACs it gates."""

    masks: torch.Tensor  # (N, T, C, 3) one-hot keep / reuse / skip; straight-through gradients in training
    conv1_macs: int  # conv1 over all its output channels, one frame
    conv2_macs: int  # conv2 over all its input channels, one frame

    def saved_macs(self) -> torch.Tensor:
        """Per-clip MACs that Eq. 5 saves against computing every channel (differentiable in the masks)."""
        keep, reuse, skip = self.masks.unbind(-1)
        reused_next = F.pad(reuse[:, 1:], (0, 0, 0, 1))
        not_computed = (1 - keep) * (1 - reused_next)
        return not_computed.mean(-1).sum(-1) * self.conv1_macs + skip.mean(-1).sum(-1) * self.conv2_macs


@dataclass
class PolicyRecord:
    """The decisions of every gated block during one forward pass, in execution order."""

    frames: int
    size: int
    blocks: list[BlockDecisions] = field(default_factory=list)

    def policies(self) -> list[AdaFusePolicy]:
        """Keep / reuse / skip fractions per clip: overall, per block, per frame."""
        counts = torch.stack([b.masks.detach().sum(2) for b in self.blocks], 1).double()  # (N, B, T, 3)
        channels = torch.tensor([b.masks.shape[2] for b in self.blocks], dtype=torch.float64)
        per_block = counts.sum(2) / (channels[:, None] * self.frames)
        per_frame = counts.sum(1) / channels.sum()
        overall = counts.sum((1, 2)) / (channels.sum() * self.frames)
        return [
            AdaFusePolicy(
                overall=_usage(overall[n]),
                blocks=[_usage(row) for row in per_block[n]],
                frames=[_usage(row) for row in per_frame[n]],
            )
            for n in range(counts.shape[0])
        ]


def _usage(fractions: torch.Tensor) -> ChannelUsage:
    keep, reuse, skip = fractions.clamp(0, 1).tolist()
    return ChannelUsage(keep=keep, reuse=reuse, skip=skip)


_recorder: ContextVar[PolicyRecord | None] = ContextVar("adafuse_recorder", default=None)


@contextlib.contextmanager
def _recording(frames: int, size: int) -> Iterator[PolicyRecord]:
    record = PolicyRecord(frames, size)
    token = _recorder.set(record)
    try:
        yield record
    finally:
        _recorder.reset(token)


# ---------------------------------------------------------------------------------------------------------
# Policy net and the block.


class PolicyNet(nn.Module):
    """Keep / reuse / skip logits per output channel of conv1 from the pooled input of frames t−1 and t."""

    def __init__(self, in_channels: int, width: int, hidden: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(2 * in_channels, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc_out = nn.Linear(hidden, DECISIONS * width)
        for fc in (self.fc_in, self.fc_out):
            nn.init.normal_(fc.weight, std=0.001)
            nn.init.zeros_(fc.bias)

    def tie_fcs(self, other: PolicyNet) -> None:
        """Share the parameters of both FCs with ``other``; each net keeps its own BatchNorm1d."""
        for mine, theirs in ((self.fc_in, other.fc_in), (self.fc_out, other.fc_out)):
            mine.weight, mine.bias = theirs.weight, theirs.bias

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """(N·T, C_in, H, W) block input → logits (N, T, width, 3)."""
        pooled = x.mean((2, 3)).view(-1, frames, x.shape[1])
        previous = F.pad(pooled, (0, 0, 1, 0))[:, :-1]
        hidden = self.relu(self.bn(self.fc_in(torch.cat([previous, pooled], -1).flatten(0, 1))))
        return self.fc_out(hidden).view(pooled.shape[0], frames, -1, DECISIONS)


class AdaFuseBlock(ResidualBlock):
    """A TSN / TSM residual block with a policy net between conv1 (+ BN, ReLU) and conv2.

    It takes over the modules of the block it replaces, under the same names. Training (and the masked
    reference) runs the backbone's block with the dense masked fusion in its branch. In eval mode the gated
    convolutions execute only what the policy keeps, every convolution with its batch norm folded in (cached
    while weights and statistics stay the same) and, on the CPU, its ReLU and the residual sum fused into it.
    """

    def __init__(self, block: ResidualBlock, policy: PolicyNet, tau: float) -> None:
        nn.Module.__init__(self)  # the modules come from ``block``, not from ResidualBlock's constructor
        for name, module in block.named_children():
            self.add_module(name, module)
        self.shift, self.downsample = block.shift, block.downsample  # also where they are None
        if self.conv1.groups != 1 or self.conv2.groups != 1:
            raise ValueError("AdaFuse gates ungrouped convolutions only")
        self.out_channels = block.out_channels
        self.bottleneck = isinstance(block, Bottleneck)
        self.policy = policy
        self.tau = tau
        self._folded = FoldCache()

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        directive = _directive_of(self)
        if self.training or directive.masked:
            return super().forward(x, frames)
        shifted = x if self.shift is None else self.shift(x, frames)
        shortcut = x if self.downsample is None else self._folded(*self.downsample).dense(x)
        masks = self._decide(shifted, frames, directive)
        codes = None if directive.keep_all else masks.argmax(-1)
        first, second = self._folded(self.conv1, self.bn1), self._folded(self.conv2, self.bn2)
        pair = _pair_executor.get()
        if not self.bottleneck:
            return pair(shifted, codes, first, second, residual=shortcut, relu=True)
        out = pair(shifted, codes, first, second, relu=True)
        return self._folded(self.conv3, self.bn3).dense(out, residual=shortcut, relu=True)

    def branch(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """The residual branch with the dense masked fusion: training, and the reference at inference."""
        masks = self._decide(x, frames, _directive_of(self))
        out = self.bn2(self.conv2(fuse_masked(self.relu(self.bn1(self.conv1(x))), masks)))
        return self.bn3(self.conv3(self.relu(out))) if self.bottleneck else out

    def _decide(self, x: torch.Tensor, frames: int, directive: _Directive) -> torch.Tensor:
        """Run the policy net on the branch input and record the decisions it (or the directive) makes."""
        masks = self._masks(self.policy(x, frames), directive)
        self._record(masks, x)
        return masks

    def _masks(self, logits: torch.Tensor, directive: _Directive) -> torch.Tensor:
        """One-hot keep / reuse / skip per (clip, frame, channel), no reuse at the first frame."""
        if directive.keep_all:
            codes = torch.zeros_like(logits[..., 0], dtype=torch.long)
        elif directive.codes is not None:
            codes = directive.codes.to(logits.device).expand(logits.shape[:-1])
        elif self.training:
            return _first_frame_reuse_is_skip(F.gumbel_softmax(logits, tau=self.tau, hard=True))
        else:
            codes = logits.argmax(-1)
        return _first_frame_reuse_is_skip(F.one_hot(codes, DECISIONS).to(logits.dtype))

    def _record(self, masks: torch.Tensor, x: torch.Tensor) -> None:
        record = _recorder.get()
        if record is None:
            return
        size1 = conv_output_size(self.conv1, x.shape[-2:])
        size2 = conv_output_size(self.conv2, size1)
        width = self.conv1.out_channels
        conv1_macs = conv_macs((width, *size1), self.conv1.in_channels, self.conv1.kernel_size)
        conv2_macs = conv_macs((self.conv2.out_channels, *size2), width, self.conv2.kernel_size)
        record.blocks.append(BlockDecisions(masks, conv1_macs, conv2_macs))


def _first_frame_reuse_is_skip(masks: torch.Tensor) -> torch.Tensor:
    """A reuse at the first frame copies zeros: make it the skip it amounts to (values are unchanged)."""
    keep, reuse, skip = masks[:, :1].unbind(-1)
    first = torch.stack([keep, torch.zeros_like(reuse), skip + reuse], -1)
    return torch.cat([first, masks[:, 1:]], 1)


def fuse_masked(conv1_out: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Dense fusion (training, reference): keep · y_t + reuse · y_{t−1} over all channels, zeros elsewhere."""
    n, t, c = masks.shape[:3]
    y = conv1_out.view(n, t, c, *conv1_out.shape[-2:])
    previous = torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], 1)
    keep, reuse = masks[..., KEEP, None, None], masks[..., REUSE, None, None]
    return (y * keep + previous * reuse).flatten(0, 1)


# ---------------------------------------------------------------------------------------------------------
# Gated execution: only the channels the policy keeps.


@dataclass
class _ChannelPlan:
    """Per frame (clip-major): conv1's output channels in execution order, and where its parts end.

    Order: kept and not reused next, kept and reused next, reused next only. The kept channels are then a
    prefix and those that frame t+1 reuses a suffix of what conv1 computes at t: both are slices.
    """

    order: torch.Tensor  # (N·T, C) int64, on the CPU
    kept_only_end: list[int]
    kept_end: list[int]
    needed_end: list[int]
    clips: int
    frames: int

    @staticmethod
    def of(codes: torch.Tensor) -> _ChannelPlan:
        keep, reuse = codes == KEEP, codes == REUSE
        reused_next = F.pad(reuse[:, 1:], (0, 0, 0, 1))
        rank = torch.where(keep, reused_next.long(), torch.where(reused_next, 2, 3)).flatten(0, 1).cpu()
        order = torch.argsort(rank, dim=-1, stable=True)
        ends = [(rank <= r).sum(-1).tolist() for r in range(3)]
        return _ChannelPlan(order, *ends, clips=codes.shape[0], frames=codes.shape[1])

    @property
    def total_frames(self) -> int:
        return len(self.order)

    def conv1_channels(self, frame: int) -> torch.Tensor:
        return self.order[frame, : self.needed_end[frame]]

    def reused_slice(self, frame: int) -> slice:
        """Where the channels that ``frame`` reuses lie in conv1's output of the frame before it."""
        if frame % self.frames == 0:
            return slice(0, 0)
        return slice(self.kept_only_end[frame - 1], self.needed_end[frame - 1])

    def reuses(self, frame: int) -> bool:
        reused = self.reused_slice(frame)
        return reused.stop > reused.start

    def conv2_channels(self, frame: int) -> torch.Tensor:
        """conv2's input channels at ``frame``: the kept ones, then the reused ones, in conv1's order."""
        kept = self.order[frame, : self.kept_end[frame]]
        if not self.reuses(frame):
            return kept
        return torch.cat([kept, self.order[frame - 1, self.reused_slice(frame)]])

    def clip_counts(self, group: tuple[int, ...]) -> torch.Tensor:
        """How many frames of each clip a group of frames holds."""
        return torch.bincount(torch.tensor(group) // self.frames, minlength=self.clips).double()


def _group_frames(channel_sets: Sequence[torch.Tensor]) -> list[tuple[int, ...]]:
    """Frames grouped by identical channel lists, each group in frame order."""
    groups: dict[bytes, list[int]] = {}
    for frame, channels in enumerate(channel_sets):
        groups.setdefault(channels.numpy().tobytes(), []).append(frame)
    return [tuple(frames) for frames in groups.values()]


def _frame_index(frames: tuple[int, ...], device: torch.device) -> slice | torch.Tensor:
    """Index of a group of frames: a (strided) slice, i.e. a view, when they are evenly spaced."""
    step = frames[1] - frames[0] if len(frames) > 1 else 1
    if all(b - a == step for a, b in zip(frames, frames[1:], strict=False)):
        return slice(frames[0], frames[-1] + 1, step)
    return torch.tensor(frames, device=device)


def _channels_last_empty(like: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


def gated_conv_pair(
    x: torch.Tensor,
    codes: torch.Tensor | None,
    first: FoldedConv,
    second: FoldedConv,
    *,
    residual: torch.Tensor | None = None,
    relu: bool = False,
) -> torch.Tensor:
    """``second(fuse(relu(first(x))), residual, relu)`` computing only what the decisions keep (inference).

    x: (N·T, C_in, H, W) frames, clip-major. codes: (N, T, C) keep / reuse / skip per output channel of
    ``first``, no reuse at a clip's first frame; None keeps everything (no data-dependent step, so it also
    runs on the meta device). Equal to the masked formulation; reports its MACs per clip.
    """
    if codes is None:
        y = first(x, relu=True)
        out = second(y, residual=residual, relu=relu)
        record_macs(x.shape[0] * (first.macs(y, x.shape[1]) + second.macs(out, y.shape[1])))
        return out
    plan = _ChannelPlan.of(codes)
    conv1_out, conv1_batches, conv1_macs = _gated_first(x, plan, first)
    out, conv2_macs = _gated_second(conv1_out, conv1_batches, plan, second, residual, relu)
    record_macs(conv1_macs + conv2_macs)
    return out


def _gated_first(
    x: torch.Tensor, plan: _ChannelPlan, first: FoldedConv
) -> tuple[list[torch.Tensor], dict[tuple[int, ...], torch.Tensor], torch.Tensor]:
    """relu(first(x)) of every frame over the channels it needs, frames with equal needs as one batch.

    Returns each frame's output (needed, H, W), each batch's output, and the MACs per clip.
    """
    size = conv_output_size(first, x.shape[-2:])
    batches, macs = {}, torch.zeros(plan.clips, dtype=torch.float64)
    channel_sets = [plan.conv1_channels(f) for f in range(plan.total_frames)]
    for group in _group_frames(channel_sets):
        channels = channel_sets[group[0]]
        if len(channels):
            y = first(x[_frame_index(group, x.device)], outputs=channels, relu=True)
        else:
            y = _channels_last_empty(x, len(group), 0, *size)
        batches[group] = y
        macs += plan.clip_counts(group) * first.macs(y, x.shape[1])
    per_frame = [x] * plan.total_frames
    for group, y in batches.items():
        for position, frame in enumerate(group):
            per_frame[frame] = y[position]
    return per_frame, batches, macs


def _gated_second(
    conv1_out: list[torch.Tensor],
    conv1_batches: dict[tuple[int, ...], torch.Tensor],
    plan: _ChannelPlan,
    second: FoldedConv,
    residual: torch.Tensor | None,
    relu: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """second() of every frame over its kept and reused channels only; the output and the MACs per clip."""
    like = conv1_out[0]
    size = conv_output_size(second, like.shape[-2:])
    out_channels = second.weight.shape[0]
    channel_sets = [plan.conv2_channels(f) for f in range(plan.total_frames)]
    groups = _group_frames(channel_sets)
    out = None if len(groups) == 1 else _channels_last_empty(like, plan.total_frames, out_channels, *size)
    macs = torch.zeros(plan.clips, dtype=torch.float64)
    for group in groups:
        channels = channel_sets[group[0]]
        group_residual = None if residual is None else residual[_frame_index(group, residual.device)]
        if len(channels):
            fused = _fused_input(group, len(channels), plan, conv1_out, conv1_batches)
            z = second(fused, inputs=channels, residual=group_residual, relu=relu)
        else:  # every channel skipped: a convolution of zeros, i.e. its bias
            z = _channels_last_empty(like, len(group), out_channels, *size)
            z.copy_(second.bias[:, None, None].expand_as(z[0]))
            if group_residual is not None:
                z += group_residual
            if relu:
                z.relu_()
        macs += plan.clip_counts(group) * second.macs(z, len(channels))
        if out is None:  # a single group: every frame, in order
            out = z
        else:
            out[_frame_index(group, z.device)] = z
    return out, macs


def _fused_input(
    group: tuple[int, ...],
    channels: int,
    plan: _ChannelPlan,
    conv1_out: list[torch.Tensor],
    conv1_batches: dict[tuple[int, ...], torch.Tensor],
) -> torch.Tensor:
    """The second conv's input for a group of frames: each frame's kept channels, then those it reuses."""
    batch = conv1_batches.get(group)
    if batch is not None and not any(plan.reuses(f) for f in group):
        return batch[:, :channels]  # the first conv ran these frames together and nothing is reused: a view
    fused = _channels_last_empty(conv1_out[group[0]], len(group), channels, *conv1_out[group[0]].shape[-2:])
    for position, frame in enumerate(group):
        kept = plan.kept_end[frame]
        fused[position, :kept] = conv1_out[frame][:kept]
        if kept < channels:
            fused[position, kept:] = conv1_out[frame - 1][plan.reused_slice(frame)]
    return fused


# ---------------------------------------------------------------------------------------------------------
# The model.


def build_adafuse_backbone(config: AdaFuseConfig) -> ResNet2D:
    """The TSN / TSM ResNet of ``config`` with every block of the gated stages replaced by an AdaFuse block."""
    backbone = build_backbone(config)
    stages = backbone.stages()
    if not config.gated_stages or not set(config.gated_stages) <= set(range(1, len(stages) + 1)):
        raise ValueError(f"gated_stages must be some of 1..{len(stages)}, got {config.gated_stages}")
    shared: dict[tuple[int, int], PolicyNet] = {}
    for index in config.gated_stages:
        stage = stages[index - 1]
        for position, block in enumerate(stage):
            dims = (block.conv1.in_channels, block.conv1.out_channels)
            policy = PolicyNet(*dims, config.policy_hidden(dims[1]))
            if config.share_policy_fcs:
                policy.tie_fcs(shared.setdefault(dims, policy))
            stage[position] = AdaFuseBlock(block, policy, config.tau)
    return backbone


class AdaFuse(TSN):
    """AdaFuse on a TSN / TSM ResNet; ``forward`` gives the clip logits as TSN does.

    After every forward, ``last_record`` holds its decisions (per gated block the masks and the MACs they
    gate) and :meth:`policy_gflops` its per-clip GFLOPs by Eq. 5, the training loss term. In eval mode the
    gated blocks execute only what their policy keeps.
    """

    family = "adafuse"

    def __init__(self, config: AdaFuseConfig) -> None:
        super().__init__(config, build_adafuse_backbone(config))
        self.last_record: PolicyRecord | None = None

    def gated_blocks(self) -> list[AdaFuseBlock]:
        """The blocks with a policy net, in execution order."""
        return [module for module in self.backbone.modules() if isinstance(module, AdaFuseBlock)]

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if _recorder.get() is not None:  # a caller collects the decisions
            return super().forward(clips)
        with _recording(clips.shape[2], clips.shape[-1]) as record:
            logits = super().forward(clips)
        self.last_record = record
        return logits

    def forward_with_policy(self, clips: torch.Tensor) -> tuple[torch.Tensor, list[AdaFusePolicy]]:
        with _recording(clips.shape[2], clips.shape[-1]) as record:
            logits = self(clips)
        return logits, record.policies()

    def policy_gflops(self) -> torch.Tensor:
        """GFLOPs per clip of the last forward pass's policy by Eq. 5, differentiable in the policy.

        The layers the policy does not touch and the policy nets count in full; for training, add
        ``λ · policy_gflops().mean()`` to the cross-entropy (Eq. 6).
        """
        record = self.last_record
        if record is None:
            raise RuntimeError("policy_gflops() describes the last forward pass: run one first")
        saved = torch.stack([block.saved_macs() for block in record.blocks]).sum(0)
        return self.full_gflops(record.frames, record.size) - saved / 1e9

    def full_compute(self) -> contextlib.AbstractContextManager:
        return _directing(dict.fromkeys(self.gated_blocks(), {"keep_all": True}))

    def masked_execution(self) -> contextlib.AbstractContextManager:
        """Run the dense masked formulation (training's) at inference too: the reference for gated execution."""
        return _directing(dict.fromkeys(self.gated_blocks(), {"masked": True}))

    def follow_policy(self, decisions: Sequence[torch.Tensor]) -> contextlib.AbstractContextManager:
        """Use the given decisions instead of the policy nets': per gated block, a (T, C) or (N, T, C) tensor
        of codes KEEP (0), REUSE (1) or SKIP (2) for conv1's C output channels. The policy nets still run."""
        blocks = self.gated_blocks()
        if len(decisions) != len(blocks):
            raise ValueError(f"{len(blocks)} gated blocks, {len(decisions)} decision tensors")
        for block, codes in zip(blocks, decisions, strict=True):
            if codes.shape[-1] != block.conv1.out_channels or codes.dtype != torch.long:
                raise ValueError(
                    f"decisions for a block of width {block.conv1.out_channels} must be int64 "
                    f"(..., {block.conv1.out_channels}), got {codes.dtype} {tuple(codes.shape)}"
                )
        return _directing({block: {"codes": codes} for block, codes in zip(blocks, decisions, strict=True)})

    @contextlib.contextmanager
    def force_saving(self, fraction: float, *, reuse: bool = True) -> Iterator[float]:
        """Follow a fixed policy that saves about ``fraction`` of the full-compute MACs at the configured
        frames and size; yields the fraction it saves by Eq. 5.

        In every gated block the same share of channels is skipped at every frame and, with ``reuse``, up to
        that share more is kept at even and reused at odd frames (conv1 then runs them every other frame).
        The channels are a fixed random choice per block, the same for every clip.
        """
        if not 0 <= fraction < 1:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        frames, size = self.config.frames, self.config.size
        costs = self._block_costs(frames, size)
        full = self.full_gflops(frames, size) * 1e9

        def saved(share: float) -> float:
            return sum(_pattern_saving(block, frames, share, reuse) for block in costs)

        share = min((step / 1000 for step in range(1001)), key=lambda s: abs(saved(s) / full - fraction))
        decisions = [
            _saving_pattern(block.masks.shape[2], frames, share, reuse, seed) for seed, block in enumerate(costs)
        ]
        achieved = sum(
            BlockDecisions(_one_hot(codes[None]), block.conv1_macs, block.conv2_macs).saved_macs().item()
            for codes, block in zip(decisions, costs, strict=True)
        )
        with self.follow_policy(decisions):
            yield achieved / full

    def execution_of(
        self, codes: Sequence[torch.Tensor], frames: int, size: int
    ) -> tuple[list[float], list[AdaFusePolicy]]:
        """Executed GFLOPs per clip (Eq. 5, as the gated blocks execute it) and the policies of given decisions:
        per gated block, (N, T, C) keep / reuse / skip codes, as an exported graph outputs them."""
        costs = self._block_costs(frames, size)
        blocks = [
            BlockDecisions(_one_hot(block_codes.long()), cost.conv1_macs, cost.conv2_macs)
            for block_codes, cost in zip(codes, costs, strict=True)
        ]
        saved = torch.stack([block.saved_macs() for block in blocks]).sum(0)
        gflops = (self.full_gflops(frames, size) - saved / 1e9).tolist()
        return gflops, PolicyRecord(frames, size, blocks).policies()

    def _block_costs(self, frames: int, size: int) -> list[BlockDecisions]:
        """Every gated block's per-frame conv costs (with keep-everything masks), from a meta pass."""
        with _recording(frames, size) as record:
            count_flops(self, frames, size)
        return record.blocks


def _one_hot(codes: torch.Tensor) -> torch.Tensor:
    return F.one_hot(codes, DECISIONS).double()


def _pattern_counts(channels: int, share: float, reuse: bool) -> tuple[int, int]:
    """Channels skipped, and channels alternating keep / reuse, of a forced-saving pattern."""
    skipped = round(share * channels)
    alternating = min(round(min(share, 1 - share) * channels), channels - skipped) if reuse else 0
    return skipped, alternating


def _pattern_saving(block: BlockDecisions, frames: int, share: float, reuse: bool) -> float:
    """MACs per clip that the forced-saving pattern saves in one block (Eq. 5, counted directly)."""
    channels = block.masks.shape[2]
    skipped, alternating = _pattern_counts(channels, share, reuse)
    per_channel_conv1, per_channel_conv2 = block.conv1_macs / channels, block.conv2_macs / channels
    return frames * skipped * (per_channel_conv1 + per_channel_conv2) + frames // 2 * alternating * per_channel_conv1


def _saving_pattern(channels: int, frames: int, share: float, reuse: bool, seed: int) -> torch.Tensor:
    """(T, C) codes: a share of the channels skipped, up to as many kept at even and reused at odd frames."""
    skipped, alternating = _pattern_counts(channels, share, reuse)
    chosen = torch.randperm(channels, generator=torch.Generator().manual_seed(seed))
    codes = torch.full((frames, channels), KEEP, dtype=torch.long)
    codes[:, chosen[:skipped]] = SKIP
    codes[1::2, chosen[skipped : skipped + alternating]] = REUSE
    return codes


class GatedPairExecutor(Protocol):
    """How a gated block's conv pair runs at inference: ``second(fuse(relu(first(x))), residual, relu)`` where
    ``fuse`` applies the keep / reuse / skip ``codes`` (N, T, C) to conv1's output (None: keep everything).

    Implemented by ``gated_conv_pair`` (eager, the default), ``export.ops.gated_conv_pair`` (one ONNX node when
    traced) and ``export.triton_gating.gated_conv_pair`` (CUDA kernels).
    """

    def __call__(
        self,
        x: torch.Tensor,
        codes: torch.Tensor | None,
        first: FoldedConv,
        second: FoldedConv,
        *,
        residual: torch.Tensor | None = None,
        relu: bool = False,
    ) -> torch.Tensor: ...


_pair_executor: ContextVar[GatedPairExecutor] = ContextVar("adafuse_pair", default=gated_conv_pair)


@contextlib.contextmanager
def executing_gated_pairs(executor: GatedPairExecutor) -> Iterator[None]:
    """Run every gated pair of inference with ``executor`` instead of ``gated_conv_pair``: an ONNX custom op to
    trace, or a GPU kernel. Per context, so concurrent requests are unaffected."""
    token = _pair_executor.set(executor)
    try:
        yield
    finally:
        _pair_executor.reset(token)


def _register_presets() -> None:
    """AdaFuse on TSN-R18/R50, TSM-R50 and TSM-R50 gated in its last stage only (8×224², 174 classes), and
    ``_tiny`` twins: quarter width, two blocks a stage, 8×64², policy nets scaled down (quota 3072)."""
    paper = {
        "adafuse_tsn_r18": AdaFuseConfig(depth=18),
        "adafuse_tsn_r50": AdaFuseConfig(depth=50),
        "adafuse_tsm_r50": AdaFuseConfig(depth=50, temporal_shift=True),
        "adafuse_tsm_last_r50": AdaFuseConfig(
            depth=50, temporal_shift=True, gated_stages=(4,), hidden_width=1024, share_policy_fcs=False
        ),
    }
    for name, config in paper.items():
        register_preset(name, AdaFuse, config)
        tiny = replace(
            config, width=16, layers=(2, 2, 2, 2), size=64, hidden_quota=3072, hidden_width=config.hidden_width // 16
        )
        register_preset(f"{name}_tiny", AdaFuse, tiny)


_register_presets()
