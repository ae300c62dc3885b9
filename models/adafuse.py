"""AdaFuse (Meng et al., ICLR 2021): per-channel keep / reuse / skip between conv1 and conv2 of every block.

Each gated block of a TSN / TSM ResNet gets a policy net. For frame t it reads the global-average-pooled
block input of frames t−1 (zeros before the first frame) and t: FC → BatchNorm1d → ReLU → FC to three
logits per conv1 output channel. *Keep* uses conv1's output of frame t, *reuse* copies the channel of conv1's
output of frame t−1 (after its BN and ReLU, as computed there, not as fused there), *skip* gives zeros.
conv2 then reads the fused map. The blocks are the backbone's own (``clipwise.models.tsn``): each chosen block is
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
slices. The executed MACs are reported per clip through ``clipwise.models.flops.record_macs`` and equal Eq. 5 for
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

``structure="prefix"`` (the ``_small`` presets) is the execution-aware variant (``clipwise.models.prefix_gating``): the
policy picks, once per block per clip, a level of an ordered channel list — keep the first k, reuse the next r
on odd frames from the even frame before, skip the rest — so that every convolution runs as a dense slice of
weights laid out when the version loads. Its decisions are recorded as the same per-channel masks, so Eq. 5,
training's masked formulation and the policy report are shared; ``calibrate`` also times each level of every
block, the latency table of ``policy_time_ratio``. The paper presets keep the per-channel policy.

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
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from clipwise.models.base import Capabilities, forced_on, forcing
from clipwise.models.flops import conv_macs, count_flops, record_macs
from clipwise.models.folding import CHANNEL_BLOCK, FoldCache, FoldedConv, conv_output_size
from clipwise.models.gating import run_pair
from clipwise.models.gating_calibration import calibrate_pair, seconds_of
from clipwise.models.gating_partitions import (
    DECISIONS,
    KEEP,
    REUSE,
    SKIP,
    Decisions,
    PairCosts,
    in_blocks,
    uncalibrated_costs,
)
from clipwise.models.policy import AdaFusePolicy, ChannelUsage
from clipwise.models.prefix_gating import PrefixPolicyNet, PrefixWeights, order_by_importance, run_prefix_pair
from clipwise.models.registry import register_preset
from clipwise.models.tsn import SMALL, TSN, Bottleneck, ResidualBlock, ResNet2D, TSNConfig, build_backbone


@dataclass
class AdaFuseConfig(TSNConfig):
    """A TSN / TSM ResNet whose blocks in ``gated_stages`` (1 = layer1 … 4 = layer4) carry a policy net."""

    gated_stages: tuple[int, ...] = (1, 2, 3, 4)
    hidden_quota: int = 196608  # policy hidden width = hidden_quota // block width ...
    hidden_width: int = 0  # ... unless this is set (TSM+Last: 1024)
    share_policy_fcs: bool = True  # blocks of a stage with equal dimensions share the policy FCs
    tau: float = 0.67  # Gumbel-softmax temperature in training
    decision_group: int = 1  # channels per decision: 1 is the paper's; groups make sets an executor can exploit
    # "channel": the paper's keep / reuse / skip per (frame, channel); "prefix": one level of an ordered channel
    # list per block per clip (models.prefix_gating), which executes as dense slices
    structure: Literal["channel", "prefix"] = "channel"
    prefix_hidden: int = 64  # "prefix": hidden width of each block's policy net

    def __post_init__(self) -> None:
        super().__post_init__()
        self.gated_stages = tuple(self.gated_stages)
        if self.structure not in ("channel", "prefix"):
            raise ValueError(f"structure must be 'channel' or 'prefix', got {self.structure!r}")

    def policy_hidden(self, block_width: int) -> int:
        return self.hidden_width or max(1, self.hidden_quota // block_width)


# ---------------------------------------------------------------------------------------------------------
# What gated blocks do in the current context, and what they decided.


@dataclass(frozen=True)
class _Directive:
    """What one gated block does in the current context (``clipwise.models.base.forcing``)."""

    keep_all: bool = False  # full compute: dense conv1 and conv2, nothing gated
    masked: bool = False  # run the dense masked formulation at inference too (the reference)
    codes: torch.Tensor | None = None  # forced decision codes, (T, C) or (N, T, C)
    choices: torch.Tensor | None = None  # "prefix": forced level indices, () or (N,)


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
    input_size: tuple[int, int] = (0, 0)  # spatial size of the block's input
    partitions: tuple[str, str] | None = None  # how the executor ran conv1 and conv2 (models.gating)
    probabilities: torch.Tensor | None = None  # training: (N, T, C, 3) softmax of the logits the masks were drawn from
    choice_weights: torch.Tensor | None = None  # "prefix": (N, L) one-hot level choices (straight-through in training)

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

    def policy_gflops(self, full_gflops: float) -> torch.Tensor:
        """GFLOPs per clip of these decisions by Eq. 5 (``full_gflops`` minus what they save), differentiable."""
        saved = torch.stack([block.saved_macs() for block in self.blocks]).sum(0)
        return full_gflops - saved / 1e9

    def policies(self, full_gflops: float) -> list[AdaFusePolicy]:
        """Keep / reuse / skip fractions per clip (overall, per block, per frame), its Eq. 5 GFLOPs and how the
        executor ran each block."""
        counts = torch.stack([b.masks.detach().sum(2) for b in self.blocks], 1).double()  # (N, B, T, 3)
        channels = torch.tensor([b.masks.shape[2] for b in self.blocks], dtype=torch.float64)
        per_block = counts.sum(2) / (channels[:, None] * self.frames)
        per_frame = counts.sum(1) / channels.sum()
        overall = counts.sum((1, 2)) / (channels.sum() * self.frames)
        gflops = self.policy_gflops(full_gflops).detach().tolist()
        executed = (
            [] if any(b.partitions is None for b in self.blocks) else ["/".join(b.partitions) for b in self.blocks]
        )
        return [
            AdaFusePolicy(
                overall=_usage(overall[n]),
                blocks=[_usage(row) for row in per_block[n]],
                frames=[_usage(row) for row in per_frame[n]],
                gflops=gflops[n],
                executed=executed,
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
    """Keep / reuse / skip logits per group of ``group`` output channels of conv1 (1: per channel, the paper's)
    from the pooled input of frames t−1 and t."""

    def __init__(self, in_channels: int, width: int, hidden: int, group: int = 1) -> None:
        super().__init__()
        if width % group:
            raise ValueError(f"decision groups of {group} channels do not divide a block of width {width}")
        self.group = group
        self.fc_in = nn.Linear(2 * in_channels, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc_out = nn.Linear(hidden, DECISIONS * (width // group))
        for fc in (self.fc_in, self.fc_out):
            nn.init.normal_(fc.weight, std=0.001)
            nn.init.zeros_(fc.bias)

    def tie_fcs(self, other: PolicyNet) -> None:
        """Share the parameters of both FCs with ``other``; each net keeps its own BatchNorm1d."""
        for mine, theirs in ((self.fc_in, other.fc_in), (self.fc_out, other.fc_out)):
            mine.weight, mine.bias = theirs.weight, theirs.bias

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """(N·T, C_in, H, W) block input → logits (N, T, width / group, 3)."""
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

    def __init__(self, block: ResidualBlock, policy: PolicyNet | PrefixPolicyNet, tau: float) -> None:
        nn.Module.__init__(self)  # the modules come from ``block``, not from ResidualBlock's constructor
        for name, module in block.named_children():
            self.add_module(name, module)
        self.shift, self.downsample = block.shift, block.downsample  # also where they are None
        self.shift_shortcut = block.shift_shortcut
        if self.conv1.groups != 1 or self.conv2.groups != 1:
            raise ValueError("AdaFuse gates ungrouped convolutions only")
        self.out_channels = block.out_channels
        self.bottleneck = isinstance(block, Bottleneck)
        self.policy = policy
        self.tau = tau
        self._folded = FoldCache()
        self._costs: dict[tuple[int, int], PairCosts] = {}  # calibrated, by spatial input size
        self._prefix_weights: PrefixWeights | None = None  # "prefix": every level's slices, laid out once
        self._choice_seconds: dict[tuple[int, int], torch.Tensor] = {}  # "prefix": latency table by input size

    @property
    def prefix(self) -> bool:
        """The policy picks one level of an ordered channel list per clip (``clipwise.models.prefix_gating``)."""
        return isinstance(self.policy, PrefixPolicyNet)

    def _operands(
        self, x: torch.Tensor, frames: int
    ) -> tuple[torch.Tensor, torch.Tensor, FoldedConv, FoldedConv, dict[str, object]]:
        """The pair's input (``x`` shifted), the block's shortcut, its folded convolutions and its epilogue."""
        shifted = x if self.shift is None else self.shift(x, frames)
        shortcut = x if self.downsample is None else self._folded(*self.downsample).dense(self.projected(x, shifted))
        first, second = self._folded(self.conv1, self.bn1), self._folded(self.conv2, self.bn2)
        epilogue = {"relu": True} if self.bottleneck else {"residual": shortcut, "relu": True}
        return shifted, shortcut, first, second, epilogue

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        directive = _directive_of(self)
        if self.training or directive.masked:
            return self.through_modules(x, frames)
        shifted, shortcut, first, second, epilogue = self._operands(x, frames)
        if self.prefix and directive.codes is None and _pair_executor.get() is gated_conv_pair:
            out = self._run_prefix(shifted, frames, directive, first, second, epilogue.get("residual"))
        else:
            out = self._run_gated(shifted, frames, directive, first, second, epilogue)
        if not self.bottleneck:
            return out
        return self._folded(self.conv3, self.bn3).dense(out, residual=shortcut, relu=True)

    def _run_gated(
        self,
        shifted: torch.Tensor,
        frames: int,
        directive: _Directive,
        first: FoldedConv,
        second: FoldedConv,
        epilogue: dict[str, object],
    ) -> torch.Tensor:
        """The pair under per-channel decisions, by the current executor (``gated_conv_pair`` by default)."""
        masks = self._decide(shifted, frames, directive)
        codes = None if directive.keep_all else masks.argmax(-1)
        costs = self.pair_costs((shifted.shape[-2], shifted.shape[-1]), first, second)
        return _pair_executor.get()(shifted, codes, first, second, costs=costs, **epilogue)

    def _run_prefix(
        self,
        shifted: torch.Tensor,
        frames: int,
        directive: _Directive,
        first: FoldedConv,
        second: FoldedConv,
        residual: torch.Tensor | None,
    ) -> torch.Tensor:
        """The pair under one level per clip: each clip's frames run as dense slices of pre-sliced weights."""
        weights = self._sliced_weights(first, second)
        indices = self._decide_prefix(shifted, frames, directive)[1] or []
        note_executed("prefix", "prefix")
        if len(set(indices)) == 1:  # one level for the whole batch: one set of calls, each clip its share
            choice = self.policy.choices[indices[0]]
            out, macs = run_prefix_pair(shifted, choice, weights, residual=residual, relu=True, frames=frames)
            record_macs(macs)
            return out
        outputs, per_clip = [], []
        for clip, index in enumerate(indices):
            rows = slice(clip * frames, (clip + 1) * frames)
            clip_residual = None if residual is None else residual[rows]
            out, macs = run_prefix_pair(
                shifted[rows], self.policy.choices[index], weights, residual=clip_residual, relu=True, frames=frames
            )
            outputs.append(out)
            per_clip.append(macs)
        record_macs(torch.tensor(per_clip, dtype=torch.float64))
        return torch.cat(outputs)

    def _sliced_weights(self, first: FoldedConv, second: FoldedConv) -> PrefixWeights:
        """A prefix policy's slices of the folded convolutions for every level, laid out again when they change."""
        if self._prefix_weights is None or not self._prefix_weights.holds(first, second):
            self._prefix_weights = PrefixWeights(first, second, self.policy.choices)
        return self._prefix_weights

    @torch.inference_mode()
    def calibrate(self, x: torch.Tensor, frames: int) -> None:
        """Time, on this machine, what the pair chooses between on block inputs like ``x`` (N·T, C, H, W) and
        keep it by spatial size: the executor's cost models, or a prefix policy's latency table of levels."""
        shifted, _, first, second, epilogue = self._operands(x, frames)
        size = (shifted.shape[-2], shifted.shape[-1])
        if self.prefix:
            weights = self._sliced_weights(first, second)
            self._choice_seconds[size] = self._time_choices(shifted[:frames], weights, epilogue.get("residual"))
        else:
            self._costs[size] = calibrate_pair(shifted, frames, first, second, **epilogue)

    def _time_choices(
        self, x: torch.Tensor, weights: PrefixWeights, residual: torch.Tensor | None
    ) -> torch.Tensor:
        """Seconds of one clip's pair under each level, on this machine: the latency table of training's cost."""
        residual = None if residual is None else residual[: x.shape[0]]
        seconds = [
            seconds_of(lambda choice=choice: run_prefix_pair(x, choice, weights, residual=residual, relu=True))
            for choice in self.policy.choices
        ]
        with torch.inference_mode(False):  # timed at inference, read by training's autograd
            return torch.tensor(seconds, dtype=torch.float64)

    def choice_costs(self, decisions: BlockDecisions, frames: int) -> torch.Tensor:
        """"prefix": the pair's cost under each level, (L,): its time at the decisions' input size as
        ``calibrate`` timed it, or, where never timed, its MACs by Eq. 5."""
        timed = self._choice_seconds.get(tuple(decisions.input_size))
        if timed is not None:
            return timed
        full = frames * (decisions.conv1_macs + decisions.conv2_macs)
        return full - self.level_saved_macs(decisions, frames)

    def level_saved_macs(self, decisions: BlockDecisions, frames: int) -> torch.Tensor:
        """"prefix": the MACs per clip each level saves by Eq. 5 at the block's costs in ``decisions``, (L,)."""
        masks = self.policy.masks(torch.eye(len(self.policy.choices), dtype=torch.float64), frames)
        return BlockDecisions(masks, decisions.conv1_macs, decisions.conv2_macs).saved_macs()

    def pair_costs(self, size: tuple[int, int], first: FoldedConv, second: FoldedConv) -> PairCosts:
        """The executor's cost models at this spatial input size: calibrated, or from MACs where never timed."""
        return self._costs.get(size) or uncalibrated_costs(size, self.conv1.in_channels, first, second)

    def branch(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """The residual branch with the dense masked fusion: training, and the reference at inference."""
        masks = self._decide(x, frames, _directive_of(self))
        out = self.bn2(self.conv2(fuse_masked(self.relu(self.bn1(self.conv1(x))), masks)))
        return self.bn3(self.conv3(self.relu(out))) if self.bottleneck else out

    def _decide(self, x: torch.Tensor, frames: int, directive: _Directive) -> torch.Tensor:
        """Run the policy net on the branch input and record the decisions it (or the directive) makes: the
        (N, T, C, 3) keep / reuse / skip masks."""
        if self.prefix and directive.codes is None:
            return self._decide_prefix(x, frames, directive)[0]
        logits = self.policy(x, frames)
        if self.prefix:  # forced per-channel codes: the policy net still runs, its logits are not per channel
            logits = logits.new_zeros((len(logits), frames, self.conv1.out_channels, DECISIONS))
        masks = self._masks(logits, directive)
        probabilities = None
        if self.training and not self.prefix:
            probabilities = (logits / self.tau).softmax(-1).repeat_interleave(self.policy.group, dim=2)
        self._record(masks, x, probabilities)
        return masks

    def _decide_prefix(
        self, x: torch.Tensor, frames: int, directive: _Directive
    ) -> tuple[torch.Tensor, list[int] | None]:
        """One level per clip: Gumbel-softmax with straight-through gradients in training, else the argmax (or
        the forced level); recorded as the equivalent per-channel masks. Returns the masks and each clip's level
        index (None in training, where the choices are sampled, and while tracing; full compute reads no data:
        meta device too)."""
        logits = self.policy(x, frames)
        clips, levels = logits.shape
        if directive.keep_all:
            indices: list[int] | None = [0] * clips
        elif directive.choices is not None:
            indices = directive.choices.expand(clips).tolist()
        elif self.training or torch.jit.is_tracing():  # a traced graph decides in the graph
            indices = None
        else:
            indices = logits.argmax(-1).tolist()
        if indices is None:
            if self.training:
                weights = F.gumbel_softmax(logits, tau=self.tau, hard=True)
            else:  # the argmax as a one-hot, in operators every exporter keeps shape-agnostic
                weights = (logits == logits.amax(-1, keepdim=True)).to(logits.dtype)
            masks = self.policy.masks(weights, frames)
        else:
            weights = F.one_hot(torch.tensor(indices, device=logits.device), levels).to(logits.dtype)
            masks = self.policy.masks_of(indices, frames, logits)
        self._record(masks, x, None, weights)
        return masks, indices

    def _masks(self, logits: torch.Tensor, directive: _Directive) -> torch.Tensor:
        """One-hot keep / reuse / skip per (clip, frame, channel), no reuse at the first frame; the policy net
        decides per group of channels, and every channel of a group follows its group's decision."""
        width = self.conv1.out_channels
        if directive.keep_all:
            codes = torch.zeros((*logits.shape[:2], width), dtype=torch.long, device=logits.device)
        elif directive.codes is not None:
            codes = directive.codes.to(logits.device).expand((*logits.shape[:2], width))
        elif self.training:
            masks = F.gumbel_softmax(logits, tau=self.tau, hard=True).repeat_interleave(self.policy.group, dim=2)
            return _first_frame_reuse_is_skip(masks)
        else:
            codes = logits.argmax(-1).repeat_interleave(self.policy.group, dim=2)
        return _first_frame_reuse_is_skip(F.one_hot(codes, DECISIONS).to(logits.dtype))

    def _record(
        self,
        masks: torch.Tensor,
        x: torch.Tensor,
        probabilities: torch.Tensor | None,
        choice_weights: torch.Tensor | None = None,
    ) -> None:
        record = _recorder.get()
        if record is None:
            return
        size1 = conv_output_size(self.conv1, x.shape[-2:])
        size2 = conv_output_size(self.conv2, size1)
        width = self.conv1.out_channels
        conv1_macs = conv_macs((width, *size1), self.conv1.in_channels, self.conv1.kernel_size)
        conv2_macs = conv_macs((self.conv2.out_channels, *size2), width, self.conv2.kernel_size)
        size = (x.shape[-2], x.shape[-1])
        record.blocks.append(
            BlockDecisions(
                masks, conv1_macs, conv2_macs, size, probabilities=probabilities, choice_weights=choice_weights
            )
        )


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
# Gated execution: the eager executor, and the signature every executor shares.


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
    """``second(fuse(relu(first(x))), residual, relu)`` under the decisions, computed the cheapest way the cost
    models predict (``clipwise.models.gating``); reports the MACs it ran per clip.

    x: (N·T, C_in, H, W) frames, clip-major. codes: (N, T, C) keep / reuse / skip per output channel of
    ``first``, no reuse at a clip's first frame; None keeps everything (no data-dependent step, so it also
    runs on the meta device). ``costs``: the pair's cost models at this input size (None: from MACs).
    """
    if codes is None:
        y = first(x, relu=True)
        out = second(y, residual=residual, relu=relu)
        record_macs(x.shape[0] * (first.macs(y, x.shape[1]) + second.macs(out, y.shape[1])))
        return out
    costs = costs or uncalibrated_costs(x.shape[-2:], x.shape[1], first, second)
    out, run = run_pair(x, Decisions.of(codes), first, second, costs, residual=residual, relu=relu)
    record_macs(run.macs)
    note_executed(run.conv1_partition, run.conv2_partition)
    return out


def note_executed(conv1_partition: str, conv2_partition: str) -> None:
    """Record how the gated block running now computed its conv1 and conv2 (its policy's ``executed``): every
    executor calls it, with ``clipwise.models.gating``'s partition names or its own (the Triton kernels: ``triton``)."""
    record = _recorder.get()
    if record is not None and record.blocks:
        record.blocks[-1].partitions = (conv1_partition, conv2_partition)


class GatedPairExecutor(Protocol):
    """How a gated block's conv pair runs at inference: ``second(fuse(relu(first(x))), residual, relu)`` where
    ``fuse`` applies the keep / reuse / skip ``codes`` (N, T, C) to conv1's output (None: keep everything).

    Implemented by ``gated_conv_pair`` (eager, the default), ``clipwise.export.ops.gated_conv_pair`` (one ONNX node when
    traced) and ``clipwise.export.triton_gating.gated_conv_pair`` (CUDA kernels); ``costs`` is the eager executor's
    calibrated cost models, which the others may ignore.
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
        costs: PairCosts | None = None,
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
            if config.structure == "prefix":
                policy: PolicyNet | PrefixPolicyNet = PrefixPolicyNet(*dims, config.prefix_hidden)
            else:
                policy = PolicyNet(*dims, config.policy_hidden(dims[1]), config.decision_group)
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
    capabilities = Capabilities(policy="gated_pairs", objective="adafuse")

    def __init__(self, config: AdaFuseConfig) -> None:
        super().__init__(config, build_adafuse_backbone(config))
        self.last_record: PolicyRecord | None = None
        self._block_costs: dict[tuple[int, int], list[BlockDecisions]] = {}

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
        return logits, record.policies(self.full_gflops(record.frames, record.size))

    def policy_gflops(self) -> torch.Tensor:
        """GFLOPs per clip of the last forward pass's policy by Eq. 5, differentiable in the policy.

        The layers the policy does not touch and the policy nets count in full; for training, add
        ``λ · policy_gflops().mean()`` to the cross-entropy (Eq. 6).
        """
        record = self.last_record
        if record is None:
            raise RuntimeError("policy_gflops() describes the last forward pass: run one first")
        return record.policy_gflops(self.full_gflops(record.frames, record.size))

    def policy_time_ratio(self) -> torch.Tensor:
        """Per clip, the predicted time of the last forward pass's gated pairs under its decisions over their
        time with every channel, differentiable in the decisions: the latency-aware cost term of training.

        Each pair is predicted as the executor runs a clip alone with the ``union`` partition: conv1 over the
        channels any frame needs, conv2 over those any frame reads, by the block's cost models
        (``clipwise.models.gating``; ``calibrate`` first, else they come from MACs). In training the channel counts are
        expected ones under the policy's probabilities (frames drawn independently): channel c is in the union
        with probability 1 − Π_t (1 − p_t,c), so a channel a policy uses at one frame costs as much as one it
        uses at all, and the term rewards skipping the same channels at every frame — what execution can turn
        into time. At inference it counts the decisions themselves. A prefix policy's blocks are predicted from
        their latency table instead: the time of each level as ``calibrate`` measured it (MACs where never
        timed), weighted by the level choices (straight-through one-hot in training).
        """
        record = self.last_record
        if record is None:
            raise RuntimeError("policy_time_ratio() describes the last forward pass: run one first")
        predicted = full = 0.0
        for block, decisions in zip(self.gated_blocks(), record.blocks, strict=True):
            if decisions.choice_weights is not None:  # "prefix": the latency table of its levels
                costs = block.choice_costs(decisions, record.frames).to(decisions.choice_weights)
                predicted = predicted + decisions.choice_weights @ costs
                full += costs[0]
                continue
            first, second = block._folded(block.conv1, block.bn1), block._folded(block.conv2, block.bn2)
            costs = block.pair_costs(decisions.input_size, first, second)
            chances = decisions.masks if decisions.probabilities is None else decisions.probabilities
            keep, reuse, _ = _first_frame_reuse_is_skip(chances).unbind(-1)
            reused_next = F.pad(reuse[:, 1:], (0, 0, 0, 1))
            needed = 1 - (1 - keep) * (1 - reused_next)
            union1 = 1 - (1 - needed).prod(1)  # (N, C)
            union2 = 1 - (1 - keep - reuse).prod(1)
            frames = record.frames
            predicted = predicted + costs.conv1_cost.gathered_time(frames, union1.sum(-1))
            predicted = predicted + costs.conv2_cost.gathered_time(frames, union2.sum(-1))
            full += costs.conv1_cost.predict(frames, None) + costs.conv2_cost.predict(frames, None)
        return predicted / full

    def full_compute(self) -> contextlib.AbstractContextManager:
        return _directing(dict.fromkeys(self.gated_blocks(), {"keep_all": True}))

    @torch.inference_mode()
    def calibrate(self, frames: int | None = None, size: int | None = None) -> None:
        """Time every gated pair's candidate computations on this machine at this input size (default: the
        configured one) and keep the fitted cost models, by which the executor then chooses. Runs one forward
        pass of a random clip; call it when a version loads, never on the request path."""
        frames, size = frames or self.config.frames, size or self.config.size
        clip = torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(0))
        inputs: dict[nn.Module, torch.Tensor] = {}

        def keep_input(block: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            inputs.setdefault(block, args[0])

        hooks = [block.register_forward_pre_hook(keep_input) for block in self.gated_blocks()]
        training = self.training
        self.eval()  # the executor runs in eval mode (training calibrates for the latency-aware cost)
        try:
            with self.full_compute():
                self(clip.to(self.fc.weight.device))
        finally:
            for hook in hooks:
                hook.remove()
            self.train(training)
        for block in self.gated_blocks():
            block.calibrate(inputs[block], frames)

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

    def fixed_decisions(self, fraction: float, *, reuse: bool = True) -> list[torch.Tensor]:
        """Per gated block, (T, C) codes of a fixed policy that saves about ``fraction`` of the full-compute
        MACs at the configured frames and size (for ``follow_policy``; ``force_saving`` follows them).

        In every gated block the same share of channels is skipped at every frame and, with ``reuse``, up to
        that share more is kept at even and reused at odd frames (conv1 then runs them every other frame).
        The channels are a fixed random choice of whole 16-channel blocks per block, the same for every clip:
        the best case, one channel set at every frame, aligned as the executor computes. Finding the share
        takes milliseconds: build them once, outside what is timed.
        """
        if not 0 <= fraction < 1:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        frames, size = self.config.frames, self.config.size
        costs = self.block_costs(frames, size)
        full = self.full_gflops(frames, size) * 1e9

        def saved(share: float) -> float:
            return sum(_pattern_saving(block, frames, share, reuse) for block in costs)

        share = min((step / 1000 for step in range(1001)), key=lambda s: abs(saved(s) / full - fraction))
        return [_saving_pattern(block.masks.shape[2], frames, share, reuse, seed) for seed, block in enumerate(costs)]

    @contextlib.contextmanager
    def force_saving(self, fraction: float, *, reuse: bool = True) -> Iterator[float]:
        """Follow ``fixed_decisions(fraction, reuse=reuse)`` (a prefix policy: ``fixed_choices(fraction)``); yields
        the fraction they save by Eq. 5."""
        if self.config.structure == "prefix":
            choices = self.fixed_choices(fraction)
            with self.follow_choices(choices):
                yield self.choices_saving(choices)
            return
        decisions = self.fixed_decisions(fraction, reuse=reuse)
        costs = self.block_costs(self.config.frames, self.config.size)
        full = self.full_gflops(self.config.frames, self.config.size) * 1e9
        achieved = sum(
            BlockDecisions(_one_hot(codes[None]), block.conv1_macs, block.conv2_macs).saved_macs().item()
            for codes, block in zip(decisions, costs, strict=True)
        )
        with self.follow_policy(decisions):
            yield achieved / full

    def follow_choices(self, choices: Sequence[torch.Tensor]) -> contextlib.AbstractContextManager:
        """A prefix policy: use the given levels instead of the policy nets' (the nets still run): per gated block,
        a () or (N,) int64 tensor of indices into its ``policy.choices``."""
        blocks = self.gated_blocks()
        if self.config.structure != "prefix":
            raise ValueError("follow_choices needs structure='prefix'; per-channel policies take follow_policy")
        if len(choices) != len(blocks):
            raise ValueError(f"{len(blocks)} gated blocks, {len(choices)} choice tensors")
        for block, chosen in zip(blocks, choices, strict=True):
            levels = len(block.policy.choices)
            if chosen.dtype != torch.long or chosen.dim() > 1 or bool(((chosen < 0) | (chosen >= levels)).any()):
                raise ValueError(f"choices for a block of {levels} levels must be int64 indices in [0, {levels})")
        return _directing({block: {"choices": chosen} for block, chosen in zip(blocks, choices, strict=True)})

    def order_channels_by_importance(self) -> None:
        """A prefix policy: permute every gated block's conv1 output channels most important first
        (``clipwise.models.prefix_gating.order_by_importance``), the network's function unchanged: what makes a trained
        TSN / TSM, or a per-channel AdaFuse's backbone, a good start for levels that keep prefixes."""
        if self.config.structure != "prefix":
            raise ValueError("ordering channels serves structure='prefix'")
        for block in self.gated_blocks():
            order_by_importance(block.conv1, block.bn1, block.conv2)

    def level_savings(self, frames: int | None = None, size: int | None = None) -> list[torch.Tensor]:
        """A prefix policy: per gated block, the MACs per clip each of its levels saves by Eq. 5, (L,)."""
        frames, size = frames or self.config.frames, size or self.config.size
        costs = self.block_costs(frames, size)
        return [block.level_saved_macs(cost, frames) for block, cost in zip(self.gated_blocks(), costs, strict=True)]

    def choices_saving(self, choices: Sequence[torch.Tensor]) -> float:
        """The mean fraction of the full-compute MACs that these levels save at the configured input."""
        saved = sum(level[chosen].double().mean() for level, chosen in zip(self.level_savings(), choices, strict=True))
        return float(saved) / (self.full_gflops() * 1e9)

    def fixed_choices(self, fraction: float) -> list[torch.Tensor]:
        """A prefix policy: per gated block one level, the same for every clip, together saving about
        ``fraction`` of the full-compute MACs: in every block the level nearest to one common share of that
        block's gated MACs saved (the share searched on a grid)."""
        if not 0 <= fraction < 1:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        savings = self.level_savings()
        gated = [level.max() + (level.max() == 0) for level in savings]  # every block has a saving level
        full = self.full_gflops() * 1e9

        def nearest(share: float) -> list[torch.Tensor]:
            return [(level / top - share).abs().argmin() for level, top in zip(savings, gated, strict=True)]

        def saved(share: float) -> float:
            return sum(float(level[index]) for level, index in zip(savings, nearest(share), strict=True)) / full

        share = min((step / 100 for step in range(101)), key=lambda s: abs(saved(s) - fraction))
        return nearest(share)

    def random_choices(
        self, saving: float, *, clips: int = 1, spread: float = 0.25, seed: int = 0
    ) -> list[torch.Tensor]:
        """A prefix policy: levels drawn per (clip, block) that save about ``saving`` of the full-compute MACs on
        average: in each block the level nearest to a share of its gated MACs drawn uniformly in ``centre ±
        spread``, the centre found by bisection. Per gated block, (N,) indices for ``follow_choices``: the random
        case benchmarks measure beside learned policies."""
        savings = self.level_savings()
        shares = [level / level.max().clamp(min=1) for level in savings]
        generator = torch.Generator().manual_seed(seed)
        uniforms = [2 * torch.rand(clips, 1, generator=generator, dtype=torch.float64) - 1 for _ in shares]

        def draw(centre: float) -> list[torch.Tensor]:
            return [
                (share[None] - (centre + spread * uniform)).abs().argmin(-1)
                for share, uniform in zip(shares, uniforms, strict=True)
            ]

        low, high = 0.0, 1.0
        for _ in range(20):
            middle = (low + high) / 2
            low, high = (middle, high) if self.choices_saving(draw(middle)) < saving else (low, middle)
        return draw((low + high) / 2)

    def random_decisions(
        self, saving: float, *, clips: int = 1, reuse_share: float = 0.25, seed: int = 0
    ) -> list[torch.Tensor]:
        """Decisions drawn independently per (clip, frame, channel) whose Eq. 5 saving of the full-compute MACs
        at the configured input is about ``saving``: each channel skipped with one probability (found by
        bisection), else reused with ``reuse_share`` and kept otherwise. Per gated block, (N, T, C) codes, for
        ``follow_policy``: the case benchmarks measure beside learned policies."""
        frames, size = self.config.frames, self.config.size
        costs = self.block_costs(frames, size)
        full = self.full_gflops(frames, size)
        uniforms = [
            torch.rand(clips, frames, block.masks.shape[2], generator=torch.Generator().manual_seed(seed + index))
            for index, block in enumerate(costs)
        ]

        def draw(skip: float) -> list[torch.Tensor]:
            decisions = []
            for uniform in uniforms:
                codes = torch.full(uniform.shape, KEEP, dtype=torch.long)
                codes[uniform < skip + (1 - skip) * reuse_share] = REUSE
                codes[uniform < skip] = SKIP
                codes[:, 0][codes[:, 0] == REUSE] = SKIP  # nothing to reuse before a clip's first frame
                decisions.append(codes)
            return decisions

        def saved(skip: float) -> float:
            blocks = [
                BlockDecisions(_one_hot(codes), cost.conv1_macs, cost.conv2_macs)
                for codes, cost in zip(draw(skip), costs, strict=True)
            ]
            return 1 - PolicyRecord(frames, size, blocks).policy_gflops(full).mean().item() / full

        low, high = 0.0, 1.0
        for _ in range(30):
            middle = (low + high) / 2
            low, high = (middle, high) if saved(middle) < saving else (low, middle)
        return draw((low + high) / 2)

    def execution_of(
        self, codes: Sequence[torch.Tensor], frames: int, size: int, union_below: Sequence[tuple[float, float]]
    ) -> tuple[list[float], list[AdaFusePolicy]]:
        """Executed GFLOPs per clip and the policies (with their Eq. 5 GFLOPs) of the decisions an exported graph
        ran: per gated block its (N, T, C) keep / reuse / skip codes and the (conv1, conv2) union thresholds of
        its node. A convolution ran the union of the channels its frames need when that union held fewer than
        its threshold of the channels, and every channel otherwise (``clipwise.export.ops.GatedConvPair``)."""
        costs = self.block_costs(frames, size)
        blocks, saved = [], 0.0
        for block_codes, cost, (below1, below2) in zip(codes, costs, union_below, strict=True):
            decisions = Decisions.of(block_codes.long())
            names = []
            for any_frame, macs, below in (
                (in_blocks(decisions.needed.any(0)), cost.conv1_macs, below1),  # conv1: in whole blocks
                (decisions.active.any(0), cost.conv2_macs, below2),
            ):
                channels, union = len(any_frame), int(any_frame.sum())
                ran_union = union < below * channels
                saved += frames * (channels - union) * macs / channels if ran_union else 0.0
                names.append("union" if ran_union else "dense")
            masks = _one_hot(block_codes.long())
            blocks.append(BlockDecisions(masks, cost.conv1_macs, cost.conv2_macs, cost.input_size, tuple(names)))
        record = PolicyRecord(frames, size, blocks)
        full = self.full_gflops(frames, size)
        return [full - saved / 1e9] * len(codes[0]), record.policies(full)

    def block_costs(self, frames: int, size: int) -> list[BlockDecisions]:
        """Every gated block's per-frame conv costs and input size (with keep-everything masks), from a meta
        pass, counted once per input size."""
        key = (frames, size)
        if key not in self._block_costs:
            with _recording(frames, size) as record:
                count_flops(self, frames, size)
            self._block_costs[key] = record.blocks
        return self._block_costs[key]


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
    """(T, C) codes: a share of the channels skipped, up to as many kept at even and reused at odd frames. The
    channels are taken whole ``CHANNEL_BLOCK`` blocks at a time (in a random order of blocks) where the width is
    made of them: the best case for the executor, which computes output channels in whole blocks."""
    skipped, alternating = _pattern_counts(channels, share, reuse)
    generator = torch.Generator().manual_seed(seed)
    if channels % CHANNEL_BLOCK:
        chosen = torch.randperm(channels, generator=generator)
    else:
        blocks = torch.randperm(channels // CHANNEL_BLOCK, generator=generator)
        chosen = (blocks[:, None] * CHANNEL_BLOCK + torch.arange(CHANNEL_BLOCK)).flatten()
    codes = torch.full((frames, channels), KEEP, dtype=torch.long)
    codes[:, chosen[:skipped]] = SKIP
    codes[1::2, chosen[skipped : skipped + alternating]] = REUSE
    return codes


def _register_presets() -> None:
    """AdaFuse on TSN-R18/R50, TSM-R50 and TSM-R50 gated in its last stage only (8×224², 174 classes), and
    ``_tiny`` twins: quarter width, two blocks a stage, 8×64², policy nets scaled down (quota 3072). The
    ``_small`` presets (TSN / TSM-R18 at ``clipwise.models.tsn.SMALL``) are execution-aware: ``structure="prefix"``."""
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
    for name in ("adafuse_tsn_r18", "adafuse_tsm_r18"):
        small = AdaFuseConfig(depth=18, temporal_shift=name.startswith("adafuse_tsm"), structure="prefix", **SMALL)
        register_preset(f"{name}_small", AdaFuse, small)


_register_presets()
