"""The ways a gated conv pair of AdaFuse can run, and the cost model that predicts each one's time.

A gated pair (``clipwise.models.gating``) needs conv1's output channel c at frame t when it is kept there or
reused at t+1 (*needed*), and conv2's input channel c at frame t when it is kept or reused there (*active*).
Each convolution runs as *groups*: a group is a set of frames and the channels computed for all of them
(conv1: output channels, conv2: input channels), one gathered convolution call per group. The candidate
partitions:

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

Each convolution's partition is the one of least predicted time under its ``ConvCost``: timed on this machine
(``clipwise.models.gating_calibration``) or, for a size never calibrated, predicted from its MACs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F

from clipwise.models.folding import CHANNEL_BLOCK, FoldedConv, conv_output_size

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
