"""AdaFuse's policy net, and the record of what every gated block decided during one forward pass.

For frame t the policy net reads the global-average-pooled block input of frames t−1 (zeros before the first
frame) and t: FC → BatchNorm1d → ReLU → FC to three logits (keep / reuse / skip) per conv1 output channel.
The record is a context variable (``recording``), so concurrent forward passes keep separate records.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from clipwise.models.gating_partitions import DECISIONS
from clipwise.models.policy import AdaFusePolicy, ChannelUsage


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


def active_record() -> PolicyRecord | None:
    """The record gated blocks add their decisions to in this context; None when nobody collects them."""
    return _recorder.get()


@contextlib.contextmanager
def recording(frames: int, size: int) -> Iterator[PolicyRecord]:
    """Collect the decisions of every gated block run inside the block, in this context only."""
    record = PolicyRecord(frames, size)
    token = _recorder.set(record)
    try:
        yield record
    finally:
        _recorder.reset(token)


def first_frame_reuse_is_skip(masks: torch.Tensor) -> torch.Tensor:
    """A reuse at the first frame copies zeros: make it the skip it amounts to (values are unchanged)."""
    keep, reuse, skip = masks[:, :1].unbind(-1)
    first = torch.stack([keep, torch.zeros_like(reuse), skip + reuse], -1)
    return torch.cat([first, masks[:, 1:]], 1)
