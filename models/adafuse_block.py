"""The AdaFuse block: a TSN / TSM residual block with a policy net between conv1 (+ BN, ReLU) and conv2.

The policy net reads the residual branch's input, i.e. after TSM's shift (as the authors' code does). Training
runs hard Gumbel-softmax with straight-through gradients, executed densely: conv1 over all channels, the output
multiplied by the keep mask plus the previous frame's times the reuse mask (``fuse_masked``).

Inference: the decision is the argmax. The authors' code keeps Gumbel sampling at test time and computes
every channel densely, then multiplies by the masks. Here the gated blocks execute only what the policy
keeps (``clipwise.models.adafuse_execution.gated_conv_pair``): conv1 computes channel i of frame t only if it is
kept at t or reused at t+1 (gathered weight rows), conv2 reads only the channels not skipped at t (gathered
weight columns); an all-skipped frame gives conv2's bias without a convolution. The executed MACs are reported
per clip through ``clipwise.models.flops.record_macs`` and equal Eq. 5 for the same policy. Every convolution of a
block runs with its batch norm folded in, channels_last, and on the CPU as one oneDNN primitive with its ReLU and
the residual sum fused (the kernel torch.compile emits); the full-compute policy takes the same path, so that the
two compare like for like. What a block does in the current context (full compute, the masked reference, forced
decisions) is its ``Directive``, set through ``clipwise.models.base.forcing``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from clipwise.models.adafuse_config import AdaFuseConfig
from clipwise.models.adafuse_execution import current_executor, gated_conv_pair, note_executed
from clipwise.models.adafuse_policy import (
    BlockDecisions,
    PolicyNet,
    active_record,
    first_frame_reuse_is_skip,
)
from clipwise.models.base import forced_on, forcing
from clipwise.models.flops import conv_macs, record_macs
from clipwise.models.folding import FoldCache, FoldedConv, conv_output_size
from clipwise.models.gating_calibration import calibrate_pair, seconds_of
from clipwise.models.gating_partitions import DECISIONS, KEEP, REUSE, PairCosts, uncalibrated_costs
from clipwise.models.prefix_gating import PrefixPolicyNet, PrefixWeights, run_prefix_pair
from clipwise.models.tsn import Bottleneck, ResidualBlock, ResNet2D, build_backbone


@dataclass(frozen=True)
class Directive:
    """What one gated block does in the current context (``clipwise.models.base.forcing``)."""

    keep_all: bool = False  # full compute: dense conv1 and conv2, nothing gated
    masked: bool = False  # run the dense masked formulation at inference too (the reference)
    codes: torch.Tensor | None = None  # forced decision codes, (T, C) or (N, T, C)
    choices: torch.Tensor | None = None  # "prefix": forced level indices, () or (N,)


def directive_of(block: nn.Module) -> Directive:
    """What ``block`` does in this context: the directive forced on it, else the default."""
    return forced_on(block) or Directive()


def directing(changes: Mapping[nn.Module, dict[str, object]]) -> contextlib.AbstractContextManager:
    """Apply each block's changes to its directive inside the block, in this context only."""
    return forcing({block: replace(directive_of(block), **change) for block, change in changes.items()})


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
        directive = directive_of(self)
        if self.training or directive.masked:
            return self.through_modules(x, frames)
        shifted, shortcut, first, second, epilogue = self._operands(x, frames)
        if self.prefix and directive.codes is None and current_executor() is gated_conv_pair:
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
        directive: Directive,
        first: FoldedConv,
        second: FoldedConv,
        epilogue: dict[str, object],
    ) -> torch.Tensor:
        """The pair under per-channel decisions, by the current executor (``gated_conv_pair`` by default)."""
        masks = self._decide(shifted, frames, directive)
        codes = None if directive.keep_all else masks.argmax(-1)
        costs = self.pair_costs((shifted.shape[-2], shifted.shape[-1]), first, second)
        return current_executor()(shifted, codes, first, second, costs=costs, **epilogue)

    def _run_prefix(
        self,
        shifted: torch.Tensor,
        frames: int,
        directive: Directive,
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

    def _time_choices(self, x: torch.Tensor, weights: PrefixWeights, residual: torch.Tensor | None) -> torch.Tensor:
        """Seconds of one clip's pair under each level, on this machine: the latency table of training's cost."""
        residual = None if residual is None else residual[: x.shape[0]]
        seconds = [
            seconds_of(lambda choice=choice: run_prefix_pair(x, choice, weights, residual=residual, relu=True))
            for choice in self.policy.choices
        ]
        with torch.inference_mode(False):  # timed at inference, read by training's autograd
            return torch.tensor(seconds, dtype=torch.float64)

    def choice_costs(self, decisions: BlockDecisions, frames: int) -> torch.Tensor:
        """A prefix policy: the pair's cost under each level, (L,): its time at the decisions' input size as
        ``calibrate`` timed it, or, where never timed, its MACs by Eq. 5."""
        timed = self._choice_seconds.get(tuple(decisions.input_size))
        if timed is not None:
            return timed
        full = frames * (decisions.conv1_macs + decisions.conv2_macs)
        return full - self.level_saved_macs(decisions, frames)

    def level_saved_macs(self, decisions: BlockDecisions, frames: int) -> torch.Tensor:
        """A prefix policy: the MACs per clip each level saves by Eq. 5 at the block's costs in ``decisions``, (L,)."""
        masks = self.policy.masks(torch.eye(len(self.policy.choices), dtype=torch.float64), frames)
        return BlockDecisions(masks, decisions.conv1_macs, decisions.conv2_macs).saved_macs()

    def pair_costs(self, size: tuple[int, int], first: FoldedConv, second: FoldedConv) -> PairCosts:
        """The executor's cost models at this spatial input size: calibrated, or from MACs where never timed."""
        return self._costs.get(size) or uncalibrated_costs(size, self.conv1.in_channels, first, second)

    def branch(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """The residual branch with the dense masked fusion: training, and the reference at inference."""
        masks = self._decide(x, frames, directive_of(self))
        out = self.bn2(self.conv2(fuse_masked(self.relu(self.bn1(self.conv1(x))), masks)))
        return self.bn3(self.conv3(self.relu(out))) if self.bottleneck else out

    def _decide(self, x: torch.Tensor, frames: int, directive: Directive) -> torch.Tensor:
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
        self, x: torch.Tensor, frames: int, directive: Directive
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

    def _masks(self, logits: torch.Tensor, directive: Directive) -> torch.Tensor:
        """One-hot keep / reuse / skip per (clip, frame, channel), no reuse at the first frame; the policy net
        decides per group of channels, and every channel of a group follows its group's decision."""
        width = self.conv1.out_channels
        if directive.keep_all:
            codes = torch.zeros((*logits.shape[:2], width), dtype=torch.long, device=logits.device)
        elif directive.codes is not None:
            codes = directive.codes.to(logits.device).expand((*logits.shape[:2], width))
        elif self.training:
            masks = F.gumbel_softmax(logits, tau=self.tau, hard=True).repeat_interleave(self.policy.group, dim=2)
            return first_frame_reuse_is_skip(masks)
        else:
            codes = logits.argmax(-1).repeat_interleave(self.policy.group, dim=2)
        return first_frame_reuse_is_skip(F.one_hot(codes, DECISIONS).to(logits.dtype))

    def _record(
        self,
        masks: torch.Tensor,
        x: torch.Tensor,
        probabilities: torch.Tensor | None,
        choice_weights: torch.Tensor | None = None,
    ) -> None:
        record = active_record()
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


def fuse_masked(conv1_out: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Dense fusion (training, reference): keep · y_t + reuse · y_{t−1} over all channels, zeros elsewhere."""
    n, t, c = masks.shape[:3]
    y = conv1_out.view(n, t, c, *conv1_out.shape[-2:])
    previous = torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], 1)
    keep, reuse = masks[..., KEEP, None, None], masks[..., REUSE, None, None]
    return (y * keep + previous * reuse).flatten(0, 1)


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
