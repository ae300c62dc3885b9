"""AdaFuse's gated conv pairs at inference, run the cheapest way that gives the masked result.

A gated pair is ``second(fuse(relu(first(x))), residual, relu)``: ``fuse`` applies a keep / reuse / skip
decision per (frame, conv1 output channel) to conv1's output — keep: the channel as computed at frame t,
reuse: as computed at frame t−1, skip: zeros.

A learned policy chooses different channels at different frames, so no single computation is best for every
decision: conv1's and conv2's partitions into groups of frames and channels
(``clipwise.models.gating_partitions``) are chosen apart, each the one its cost model predicts fastest
(``choose_partitions``), and run here. Whatever runs, the output equals the dense masked reference, and the
MACs reported (``clipwise.models.flops.record_macs``, per clip) are those of the convolutions that ran —
padding channels and dense fallbacks included — not the policy's count (Eq. 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipwise.models.folding import FoldedConv, channels_of, conv_output_size
from clipwise.models.gating_partitions import Candidates, Decisions, Group, PairCosts


@dataclass
class PairRun:
    """What one gated pair ran: the partitions chosen and the MACs (per clip, or a number all clips share)."""

    conv1_partition: str
    conv2_partition: str
    macs: torch.Tensor | float


def _empty(like: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


@dataclass
class Conv1Output:
    """conv1's output for every frame, ``values`` (frames, C', H, W): C' the channels listed in ``channels``
    in that order (None: all C in their order). Whatever a frame does not need holds zeros or its value."""

    values: torch.Tensor
    channels: torch.Tensor | None

    def full_width(self, total_channels: int) -> torch.Tensor:
        """``values`` over all C channels, zeros where nothing was computed."""
        if self.channels is None:
            return self.values
        frames, _, height, width = self.values.shape
        full = _empty(self.values, frames, total_channels, height, width).zero_()
        full.permute(0, 2, 3, 1)[..., self.channels.to(full.device)] = self.values.permute(0, 2, 3, 1)
        return full


def run_conv1(
    x: torch.Tensor, groups: list[Group], first: FoldedConv, decisions: Decisions
) -> tuple[Conv1Output, torch.Tensor]:
    """relu(first(x)) of every group over its channels; the output and the MACs per clip."""
    channels = first.weight.shape[0]
    size = conv_output_size(first, x.shape[-2:])
    macs: torch.Tensor | float = 0.0
    if len(groups) == 1:  # one call: its output is conv1's output, in the group's channel order
        group = groups[0]
        count = channels if group.channels is None else len(group.channels)
        values = first(x, outputs=group.channels, relu=True) if count else _empty(x, x.shape[0], 0, *size)
        macs += decisions.clip_counts(group.frames) * first.macs_per_frame(size, x.shape[1], count)
        return Conv1Output(values, group.channels), macs
    values = _empty(x, x.shape[0], channels, *size).zero_()  # what no group computes is never read
    for group in groups:
        if group.channels is not None and not len(group.channels):
            continue
        y = first(x[_on(group.frames, x)], outputs=group.channels, relu=True)
        _scatter(values, group, y)
        count = channels if group.channels is None else len(group.channels)
        macs += decisions.clip_counts(group.frames) * first.macs_per_frame(size, x.shape[1], count)
    return Conv1Output(values, None), macs


def _scatter(values: torch.Tensor, group: Group, y: torch.Tensor) -> None:
    """Write a group's output (its frames, its channels) into the full-width map ``values`` (channels_last)."""
    target, source = values.permute(0, 2, 3, 1), y.permute(0, 2, 3, 1)
    frames = _on(group.frames, values)
    if group.channels is None:
        target[frames] = source
    elif isinstance(frames, slice):
        target[frames][..., group.channels.to(values.device)] = source
    else:  # both indexed: the indexed shape is (frames, channels, H, W)
        target[frames[:, None], :, :, group.channels.to(values.device)[None, :]] = source.permute(0, 3, 1, 2)


def _on(frames: slice | torch.Tensor, like: torch.Tensor) -> slice | torch.Tensor:
    return frames if isinstance(frames, slice) else frames.to(like.device)


def _source(computed: Conv1Output, group: Group, total_channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The map a group's channels are read from, and their positions in it (None: all of it, in order)."""
    if computed.channels is None:
        return computed.values, group.channels
    if group.channels is None:  # every channel, from a conv1 that computed some: widen it with zeros
        return computed.full_width(total_channels), None
    if len(group.channels) == len(computed.channels):  # the same sorted channels (what is read was computed)
        return computed.values, None
    return computed.values, torch.searchsorted(computed.channels, group.channels)


def fused_input(computed: Conv1Output, group: Group, decisions: Decisions) -> torch.Tensor:
    """conv2's input for a group: kept channels from conv1 at t, reused ones from t−1, zeros elsewhere."""
    channels = slice(None) if group.channels is None else group.channels
    keep = decisions.keep[group.frames][:, channels]
    reuse = decisions.reuse[group.frames][:, channels]
    values, positions = _source(computed, group, decisions.channels)
    whole = isinstance(group.frames, slice) and group.frames == slice(0, decisions.total_frames)
    current = channels_of(values if whole else values[_on(group.frames, values)], positions)
    reuses = bool(reuse.any())
    if not reuses and bool(keep.all()):
        return current
    fused = current * _as_map(keep, values)
    if reuses:
        if whole:  # the frame before is the previous row (a clip's first frame reuses nothing)
            fused[1:].addcmul_(current[:-1], _as_map(reuse[1:], values))
        else:
            before = (torch.arange(decisions.total_frames)[group.frames] - 1).clamp(min=0)
            fused.addcmul_(channels_of(values[before.to(values.device)], positions), _as_map(reuse, values))
    return fused


def _as_map(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (frames, C) mask as a (frames, C, 1, 1) multiplier of ``like``'s type."""
    return mask.to(device=like.device, dtype=like.dtype)[:, :, None, None]


def run_conv2(
    computed: Conv1Output,
    groups: list[Group],
    second: FoldedConv,
    decisions: Decisions,
    residual: torch.Tensor | None,
    relu: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """second() of every group over its input channels, with the residual and ReLU; output, MACs per clip."""
    values = computed.values
    size = conv_output_size(second, values.shape[-2:])
    out_channels, in_channels = second.weight.shape[:2]
    macs: torch.Tensor | float = 0.0
    single = len(groups) == 1
    out = None if single else _empty(values, decisions.total_frames, out_channels, *size)
    for group in groups:
        count = in_channels if group.channels is None else len(group.channels)
        group_residual = None if residual is None else residual[_on(group.frames, residual)]
        if count:
            fused = fused_input(computed, group, decisions)
            z = second(fused, inputs=group.channels, residual=group_residual, relu=relu)
        else:
            z = second.bias_only(values, group.size, size, residual=group_residual, relu=relu)
        macs += decisions.clip_counts(group.frames) * second.macs_per_frame(size, count, out_channels)
        if single:
            out = z
        else:
            out[_on(group.frames, z)] = z
    return out, macs


def run_pair(
    x: torch.Tensor,
    decisions: Decisions,
    first: FoldedConv,
    second: FoldedConv,
    costs: PairCosts,
    *,
    residual: torch.Tensor | None = None,
    relu: bool = False,
) -> tuple[torch.Tensor, PairRun]:
    """The pair under ``decisions``, each convolution by the partition ``costs`` predicts fastest
    (``choose_partitions``)."""
    candidates1 = Candidates.of(decisions.needed, decisions.clips, decisions.frames, blocks=True)
    candidates2 = Candidates.of(decisions.active, decisions.clips, decisions.frames)
    name1, name2 = choose_partitions(candidates1, candidates2, costs)
    computed, macs1 = run_conv1(x, candidates1.groups(name1), first, decisions)
    out, macs2 = run_conv2(computed, candidates2.groups(name2), second, decisions, residual, relu)
    return out, PairRun(name1, name2, _added(macs1, macs2, decisions.clips))


def choose_partitions(candidates1: Candidates, candidates2: Candidates, costs: PairCosts) -> tuple[str, str]:
    """conv1's and conv2's partitions, chosen apart: each the one of least predicted time."""
    return candidates1.choose(costs.conv1_cost), candidates2.choose(costs.conv2_cost)


def _added(first: torch.Tensor | float, second: torch.Tensor | float, clips: int) -> torch.Tensor | float:
    """The sum of two MAC figures, each per clip (a tensor) or a total all clips share evenly (a number)."""
    if isinstance(first, float | int) and isinstance(second, float | int):
        return first + second
    return sum(
        macs if isinstance(macs, torch.Tensor) else torch.full((clips,), macs / clips) for macs in (first, second)
    )
