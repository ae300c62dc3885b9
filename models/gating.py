"""AdaFuse's gated conv pairs at inference, run the cheapest way that gives the masked result.

A gated pair is ``second(fuse(relu(first(x))), residual, relu)``: ``fuse`` applies a keep / reuse / skip
decision per (frame, conv1 output channel) to conv1's output — keep: the channel as computed at frame t,
reuse: as computed at frame t−1, skip: zeros. Only two things are ever needed: conv1's output channel c at
frame t when it is kept there or reused at t+1 (*needed*), and conv2's input channel c at frame t when it is
kept or reused there (*active*).

A learned policy chooses different channels at different frames, so no single computation is best for
every decision. Each convolution of a pair runs as *groups*: a group is a set of frames and the channels
computed for all of them (conv1: output channels, conv2: input channels), one gathered convolution call
per group. The candidate partitions:

* ``dense``: one group, every frame, every channel: the plain convolution with constant weights, the
  policy applied afterwards (skipped channels zeroed, reused ones copied). Nothing saved, nothing lost.
* ``union``: one group, every frame, the union of the channels any frame needs.
* ``blocks`` (conv2): the union widened to whole 16-channel blocks — more MACs, but weights and maps are
  copied as 16-float runs and, where conv1 computed those very blocks, read without a copy.
* ``clips``: one group per clip of the batch, each over its clip's union (batched requests whose clips
  chose different channels).
* ``sets``: frames with identical channel sets together (a policy repeating a pattern over frames).

conv1's output channels are computed in whole ``CHANNEL_BLOCK`` (16) channel blocks where its width is made of
them — oneDNN's blocked kernels run a 16-multiple of outputs much faster than its remnants, and blocks are
copied as 16-float runs — while conv2 reads its exact inputs (its time follows the input count, aligned or not).

conv1's and conv2's partitions are chosen apart, each the one of least predicted time (``PairCosts``): a cost
model of each convolution calibrated on this machine when a model version loads (``calibrate_pair``, the
way cuDNN's benchmark mode times its kernels), per spatial input size, and never on the request path; a
size never calibrated is predicted from its MACs. Whatever runs, the output equals the dense masked
reference, and the MACs reported (``clipwise.models.flops.record_macs``, per clip) are those of the convolutions
that ran — padding channels and dense fallbacks included — not the policy's count (Eq. 5).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TypeVar

import torch
import torch.nn.functional as F

from clipwise.models.folding import CHANNEL_BLOCK, FoldedConv, channels_of, conv_output_size

KEEP, REUSE, SKIP = 0, 1, 2
DECISIONS = 3  # keep, reuse, skip: the last axis of a block's one-hot masks
Count = TypeVar("Count", float, torch.Tensor)  # a channel count: a number, or a tensor of them
PARTITIONS = ("dense", "union", "blocks", "clips", "sets")
# "sets" must be predicted this much faster than the best single call per clip: its many small calls on cold
# caches ran up to 1.5x their calibrated prediction on random per-frame policies (adafuse_tsn_r50, 2 threads)
SETS_MARGIN = 0.75


# ---------------------------------------------------------------------------------------------------------
# Decisions and groups.


@dataclass(frozen=True)
class Decisions:
    """One pair's decisions over a batch of ``clips × frames`` frames (clip-major), as (frames, C) masks."""

    keep: torch.Tensor
    reuse: torch.Tensor  # never at a clip's first frame
    needed: torch.Tensor  # conv1 computes it: kept here, or reused by the next frame of the clip
    active: torch.Tensor  # conv2 reads it: kept or reused here
    clips: int
    frames: int

    @staticmethod
    def of(codes: torch.Tensor) -> Decisions:
        """From (N, T, C) keep / reuse / skip codes; a reuse at a clip's first frame is a skip."""
        n, t, c = codes.shape
        codes = codes.cpu()
        keep = codes == KEEP
        reuse = codes == REUSE
        reuse[:, 0] = False
        reused_next = F.pad(reuse[:, 1:], (0, 0, 0, 1))
        flat = {name: mask.reshape(n * t, c) for name, mask in (("keep", keep), ("reuse", reuse))}
        return Decisions(
            needed=(keep | reused_next).reshape(n * t, c),
            active=(keep | reuse).reshape(n * t, c),
            clips=n,
            frames=t,
            **flat,
        )

    @property
    def total_frames(self) -> int:
        return self.keep.shape[0]

    @property
    def channels(self) -> int:
        return self.keep.shape[1]

    def clip_counts(self, frames: torch.Tensor | slice) -> torch.Tensor | int:
        """How many of ``frames`` each clip holds, for per-clip MACs: a number when every clip holds all its
        frames (``record_macs`` shares a number evenly), else a float64 tensor."""
        if isinstance(frames, slice) and frames == slice(0, self.total_frames):
            return self.total_frames
        index = torch.arange(self.total_frames)[frames]
        return torch.bincount(index // self.frames, minlength=self.clips).double()


@dataclass(frozen=True)
class Group:
    """Frames computed in one call and the channels computed for all of them (None: every channel, dense)."""

    frames: slice | torch.Tensor  # into the batch's frames: a slice where they are evenly spaced
    size: int
    channels: torch.Tensor | None


def _index_of(frames: Sequence[int]) -> slice | torch.Tensor:
    step = frames[1] - frames[0] if len(frames) > 1 else 1
    if step > 0 and all(b - a == step for a, b in zip(frames, frames[1:], strict=False)):
        return slice(frames[0], frames[-1] + 1, step)
    return torch.tensor(frames)


def _channels_of(mask: torch.Tensor) -> torch.Tensor | None:
    """The channels a (C,) mask selects; None when it is every channel."""
    return None if bool(mask.all()) else mask.nonzero().flatten()


def in_blocks(mask: torch.Tensor) -> torch.Tensor:
    """A (..., C) mask widened to whole ``CHANNEL_BLOCK`` blocks where C is made of them: a block is in when
    any of its channels is."""
    channels = mask.shape[-1]
    if channels % CHANNEL_BLOCK:
        return mask
    blocks = mask.reshape(*mask.shape[:-1], -1, CHANNEL_BLOCK).any(-1)
    return blocks.repeat_interleave(CHANNEL_BLOCK, dim=-1)


@dataclass
class Candidates:
    """What each partition of one convolution computes: per group, (frames, channels or None for all); the
    groups themselves are built only for the partition chosen (``groups``), and the distinct channel sets of
    ``sets`` only when that partition might be chosen."""

    mask: torch.Tensor  # (clips·frames, C): what each frame needs
    any_frame: torch.Tensor  # (C,): what some frame needs, the union
    clips: int
    frames: int
    counts: dict[str, list[tuple[int, int | None]]]
    rows: torch.Tensor | None = None  # "sets", once counted: the distinct rows of the mask ...
    row_of_frame: torch.Tensor | None = None  # ... and which one each frame has

    @staticmethod
    def of(mask: torch.Tensor, clips: int, frames: int, *, blocks: bool = False) -> Candidates:
        """The candidates for a (clips·frames, C) mask. ``blocks``: the channel sets are whole
        ``CHANNEL_BLOCK`` blocks where C is made of them, the blocks' other channels computed as padding and
        counted — for output channels, where oneDNN runs 16-channel blocks much faster than their remnants
        (input channels cost in proportion to their count, aligned or not)."""
        total, channels = mask.shape
        if blocks:
            mask = in_blocks(mask)
        any_frame = mask.any(0)
        union = int(any_frame.sum())
        counts: dict[str, list[tuple[int, int | None]]] = {
            "dense": [(total, None)],
            "union": [(total, None if union == channels else union)],
        }
        if not blocks and channels % CHANNEL_BLOCK == 0:  # the union in whole blocks: copied faster, more MACs
            in_whole_blocks = int(in_blocks(any_frame).sum())
            if in_whole_blocks != union:
                counts["blocks"] = [(total, None if in_whole_blocks == channels else in_whole_blocks)]
        if clips > 1:
            per_clip = mask.view(clips, frames, channels).any(1).sum(-1).tolist()
            counts["clips"] = [(frames, None if count == channels else count) for count in per_clip]
        return Candidates(mask, any_frame, clips, frames, counts)

    def predicted(self, name: str, cost: ConvCost) -> float:
        aligned, groups = name == "blocks", self.counts[name]
        split = cost.split * len(groups) if len(groups) > 1 else 0.0
        return split + sum(cost.predict(frames, channels, aligned=aligned) for frames, channels in groups)

    def choose(self, cost: ConvCost) -> str:
        """The partition of least predicted time (ties: the earlier, the simpler; ``sets`` only by
        ``SETS_MARGIN``). ``sets`` is counted only if a bound says it could win: however its frames group, each
        frame computes at least its own channels and one call is made."""
        predictions = {name: self.predicted(name, cost) for name in self.counts if name != "sets"}
        best = min(predictions, key=predictions.__getitem__)
        to_beat = SETS_MARGIN * predictions[best]
        if self._sets_may_beat(cost, to_beat) and self.offers("sets") and self.predicted("sets", cost) < to_beat:
            return "sets"
        return best

    def offers(self, name: str) -> bool:
        """Whether partition ``name`` is a candidate here (``sets`` counted now: it is one where frames differ)."""
        if name == "sets":
            self._count_sets()
        return name in self.counts

    def _sets_may_beat(self, cost: ConvCost, seconds: float) -> bool:
        per_frame = self.mask.sum(1).double()
        c0, c1, c2 = cost.gathered
        return 2 * cost.split + c0 + c1 * float(per_frame.min()) + c2 * float(per_frame.sum()) < seconds

    def _count_sets(self) -> None:
        if self.rows is not None:
            return
        channels = self.mask.shape[1]
        rows, row_of_frame, sizes = torch.unique(
            self.mask.to(torch.uint8), dim=0, return_inverse=True, return_counts=True
        )
        self.rows, self.row_of_frame = rows.bool(), row_of_frame
        if len(rows) > 1:
            self.counts["sets"] = [
                (size, None if count == channels else count)
                for size, count in zip(sizes.tolist(), rows.sum(-1).tolist(), strict=True)
            ]

    def groups(self, name: str) -> list[Group]:
        total = self.mask.shape[0]
        if name == "dense":
            return [Group(slice(0, total), total, None)]
        if name == "union":
            return [Group(slice(0, total), total, _channels_of(self.any_frame))]
        if name == "blocks":
            return [Group(slice(0, total), total, _channels_of(in_blocks(self.any_frame)))]
        if name == "clips":
            t = self.frames
            return [
                Group(slice(n * t, (n + 1) * t), t, _channels_of(self.mask[n * t : (n + 1) * t].any(0)))
                for n in range(self.clips)
            ]
        groups = []
        for index, row in enumerate(self.rows):
            members = (self.row_of_frame == index).nonzero().flatten().tolist()
            groups.append(Group(_index_of(members), len(members), _channels_of(row)))
        return groups


# ---------------------------------------------------------------------------------------------------------
# The cost model.


@dataclass(frozen=True)
class ConvCost:
    """Predicted seconds of one convolution call over ``frames`` frames: dense, ``a + b·frames``; gathered to
    ``k`` of its gated channels, ``c0 + c1·k + c2·frames·k`` (a call's overhead, the weight gather ∝ k, the
    work ∝ frames·k); ``aligned``, where timed, the same for channel sets of whole blocks (``blocks``);
    ``split``: what each group of a partition into several groups adds (gathering its frames, scattering its
    output)."""

    dense: tuple[float, float]
    gathered: tuple[float, float, float]
    aligned: tuple[float, float, float] | None = None
    split: float = 0.0

    def predict(self, frames: int, channels: int | None, *, aligned: bool = False) -> float:
        if channels is None:
            a, b = self.dense
            return a + b * frames
        if channels == 0:
            return 0.0
        return self.gathered_time(frames, channels, aligned=aligned)

    def gathered_time(self, frames: int, channels: Count, *, aligned: bool = False) -> Count:
        """The gathered prediction for a channel count: a number, or a tensor of (possibly fractional,
        differentiable) counts."""
        c0, c1, c2 = self.aligned if aligned and self.aligned is not None else self.gathered
        return c0 + (c1 + c2 * frames) * channels

    @staticmethod
    def from_macs(macs_per_frame: float, channels: int) -> ConvCost:
        """Without a calibration: time ∝ MACs, a gathered call 1.4× dearer per MAC plus a fixed overhead."""
        per_channel = macs_per_frame / channels
        return ConvCost(dense=(0.0, macs_per_frame), gathered=(0.02 * macs_per_frame, 0.0, 1.4 * per_channel))


@dataclass
class PairCosts:
    """A pair's two cost models at one spatial input size, and how they were made."""

    conv1_cost: ConvCost
    conv2_cost: ConvCost
    calibrated: bool


def _least_squares(points: list[tuple[list[float], float]]) -> list[float]:
    """Non-negative coefficients of a linear fit of least relative error (one-frame calls weigh as much as
    whole-batch ones; clamped: a cost never falls as work grows)."""
    weights = torch.tensor([1 / max(value, 1e-9) for _, value in points], dtype=torch.float64)[:, None]
    design = torch.tensor([row for row, _ in points], dtype=torch.float64) * weights
    target = torch.tensor([value for _, value in points], dtype=torch.float64)[:, None] * weights
    solution = torch.linalg.lstsq(design, target).solution.flatten()
    return solution.clamp(min=0).tolist()


def fit_cost(
    dense: list[tuple[int, float]],
    gathered: list[tuple[int, int, float]],
    aligned: list[tuple[int, int, float]] | None = None,
) -> ConvCost:
    """A ``ConvCost`` from timings: (frames, seconds) dense, (frames, channels, seconds) gathered, and gathered
    to whole blocks (``aligned``, where timed)."""

    def line(points: list[tuple[int, int, float]]) -> tuple[float, float, float]:
        return tuple(_least_squares([([1.0, k, f * k], s) for f, k, s in points]))  # type: ignore[return-value]

    dense_fit = _least_squares([([1.0, f], s) for f, s in dense])
    return ConvCost(
        dense=(dense_fit[0], dense_fit[1]), gathered=line(gathered), aligned=line(aligned) if aligned else None
    )


# ---------------------------------------------------------------------------------------------------------
# Execution.


@dataclass
class PairRun:
    """What one gated pair ran: the partitions chosen and the MACs (per clip, or a number all clips share)."""

    conv1_partition: str
    conv2_partition: str
    macs: torch.Tensor | float


def _empty(like: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


@dataclass
class _Conv1Output:
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
) -> tuple[_Conv1Output, torch.Tensor]:
    """relu(first(x)) of every group over its channels; the output and the MACs per clip."""
    channels = first.weight.shape[0]
    size = conv_output_size(first, x.shape[-2:])
    macs: torch.Tensor | float = 0.0
    if len(groups) == 1:  # one call: its output is conv1's output, in the group's channel order
        group = groups[0]
        count = channels if group.channels is None else len(group.channels)
        values = first(x, outputs=group.channels, relu=True) if count else _empty(x, x.shape[0], 0, *size)
        macs += decisions.clip_counts(group.frames) * first.macs_per_frame(size, x.shape[1], count)
        return _Conv1Output(values, group.channels), macs
    values = _empty(x, x.shape[0], channels, *size).zero_()  # what no group computes is never read
    for group in groups:
        if group.channels is not None and not len(group.channels):
            continue
        y = first(x[_on(group.frames, x)], outputs=group.channels, relu=True)
        _scatter(values, group, y)
        count = channels if group.channels is None else len(group.channels)
        macs += decisions.clip_counts(group.frames) * first.macs_per_frame(size, x.shape[1], count)
    return _Conv1Output(values, None), macs


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


def _source(computed: _Conv1Output, group: Group, total_channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The map a group's channels are read from, and their positions in it (None: all of it, in order)."""
    if computed.channels is None:
        return computed.values, group.channels
    if group.channels is None:  # every channel, from a conv1 that computed some: widen it with zeros
        return computed.full_width(total_channels), None
    if len(group.channels) == len(computed.channels):  # the same sorted channels (what is read was computed)
        return computed.values, None
    return computed.values, torch.searchsorted(computed.channels, group.channels)


def fused_input(computed: _Conv1Output, group: Group, decisions: Decisions) -> torch.Tensor:
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
    computed: _Conv1Output,
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


# ---------------------------------------------------------------------------------------------------------
# Calibration.

CALIBRATION_SHARES = (0.25, 0.5, 0.75)  # of the gated channels, timed gathered
CALIBRATION_REPEATS = 5


def seconds_of(call: Callable[[], object], repeats: int = CALIBRATION_REPEATS) -> float:
    """The fastest of ``repeats`` calls after a warm-up call (oneDNN builds its primitive for the shape): the
    minimum, not the median, since what else runs on the machine only ever adds time."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def _random_channels(channels: int, share: float, generator: torch.Generator) -> torch.Tensor:
    count = max(1, round(share * channels))
    return torch.randperm(channels, generator=generator)[:count].sort().values


def _random_blocks(channels: int, share: float, generator: torch.Generator) -> torch.Tensor:
    """The channels of about ``share`` of the ``CHANNEL_BLOCK`` blocks, chosen at random (at least one)."""
    count = max(1, round(share * channels / CHANNEL_BLOCK))
    blocks = torch.randperm(channels // CHANNEL_BLOCK, generator=generator)[:count].sort().values
    return (blocks[:, None] * CHANNEL_BLOCK + torch.arange(CHANNEL_BLOCK)).flatten()


def calibrate_pair(
    x: torch.Tensor,
    frames: int,
    first: FoldedConv,
    second: FoldedConv,
    *,
    residual: torch.Tensor | None = None,
    relu: bool = False,
) -> PairCosts:
    """Time conv1 and conv2 of a pair on inputs like ``x`` ((≥ frames, C_in, H, W), channels_last), dense and
    gathered to a few shares of the channels, at 1 and ``frames`` frames, and fit their cost models.

    conv2 is timed with its input fusion (kept and reused channels mixed) included, as ``run_conv2`` runs it,
    over random channels and, where its width is made of blocks, over random whole blocks (``blocks``)."""
    generator = torch.Generator().manual_seed(0)
    channels = first.weight.shape[0]
    full_output = first(x[:frames], relu=True)
    dense1, gathered1, dense2, gathered2, aligned2 = [], [], [], [], []
    for count in (1, frames):
        inputs = x[:count]
        computed = _Conv1Output(full_output[:count], None)
        mixed = Decisions.of(torch.randint(KEEP, REUSE + 1, (1, count, channels), generator=generator))
        tail = None if residual is None else residual[:count]
        dense1.append((count, seconds_of(partial(first, inputs, relu=True))))
        every = [Group(slice(0, count), count, None)]
        dense2.append((count, seconds_of(partial(run_conv2, computed, every, second, mixed, tail, relu))))
        for share in CALIBRATION_SHARES:
            rows = _random_channels(channels, share, generator)
            gathered1.append((count, len(rows), seconds_of(partial(first, inputs, outputs=rows, relu=True))))
            some = [Group(slice(0, count), count, rows)]
            seconds = seconds_of(partial(run_conv2, computed, some, second, mixed, tail, relu))
            gathered2.append((count, len(rows), seconds))
            if channels % CHANNEL_BLOCK == 0 and channels > CHANNEL_BLOCK:
                blocks = _random_blocks(channels, share, generator)
                whole = [Group(slice(0, count), count, blocks)]
                seconds = seconds_of(partial(run_conv2, computed, whole, second, mixed, tail, relu))
                aligned2.append((count, len(blocks), seconds))
    cost1, cost2 = fit_cost(dense1, gathered1), fit_cost(dense2, gathered2, aligned2 or None)
    # every frame its own channels, as a policy that differs per frame makes "sets" run (conv1's in whole blocks)
    blocked = channels % CHANNEL_BLOCK == 0 and channels > CHANNEL_BLOCK
    own1 = [
        Group(slice(f, f + 1), 1, (_random_blocks if blocked else _random_channels)(channels, 0.5, generator))
        for f in range(frames)
    ]
    own2 = [Group(slice(f, f + 1), 1, _random_channels(channels, 0.5, generator)) for f in range(frames)]
    mixed = Decisions.of(torch.randint(KEEP, REUSE + 1, (1, frames, channels), generator=generator))
    tail = None if residual is None else residual[:frames]
    split1 = seconds_of(partial(run_conv1, x[:frames], own1, first, mixed))
    split2 = seconds_of(partial(run_conv2, _Conv1Output(full_output, None), own2, second, mixed, tail, relu))
    return PairCosts(_with_split(cost1, split1, own1), _with_split(cost2, split2, own2), calibrated=True)


def _with_split(cost: ConvCost, seconds: float, groups: list[Group]) -> ConvCost:
    """``cost`` with ``split`` set from the time of a partition into ``groups``: what they took beyond the sum
    of their predicted calls, shared among them."""
    predicted = sum(cost.predict(group.size, len(group.channels)) for group in groups)
    return replace(cost, split=max(0.0, (seconds - predicted) / len(groups)))


def uncalibrated_costs(x_size: Sequence[int], in_channels: int, first: FoldedConv, second: FoldedConv) -> PairCosts:
    """Cost models from MACs alone, for an input size no calibration has timed."""
    size1 = conv_output_size(first, x_size)
    size2 = conv_output_size(second, size1)
    channels = first.weight.shape[0]
    return PairCosts(
        ConvCost.from_macs(first.macs_per_frame(size1, in_channels, channels), channels),
        ConvCost.from_macs(second.macs_per_frame(size2, channels, second.weight.shape[0]), channels),
        calibrated=False,
    )
