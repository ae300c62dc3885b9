"""Calibrating a gated pair's cost models: its convolutions timed on this machine when a model version loads.

Each convolution of a pair is timed dense and gathered to a few shares of its channels, at one frame and at a
clip's frames, and its ``ConvCost`` fitted (the way cuDNN's benchmark mode times its kernels), per spatial
input size, never on the request path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch

from clipwise.models.folding import CHANNEL_BLOCK, FoldedConv
from clipwise.models.gating import Conv1Output, run_conv1, run_conv2
from clipwise.models.gating_partitions import KEEP, REUSE, ConvCost, Decisions, Group, PairCosts, fit_cost

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
        computed = Conv1Output(full_output[:count], None)
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
    split2 = seconds_of(partial(run_conv2, Conv1Output(full_output, None), own2, second, mixed, tail, relu))
    return PairCosts(_with_split(cost1, split1, own1), _with_split(cost2, split2, own2), calibrated=True)


def _with_split(cost: ConvCost, seconds: float, groups: list[Group]) -> ConvCost:
    """``cost`` with ``split`` set from the time of a partition into ``groups``: what they took beyond the sum
    of their predicted calls, shared among them."""
    predicted = sum(cost.predict(group.size, len(group.channels)) for group in groups)
    return replace(cost, split=max(0.0, (seconds - predicted) / len(groups)))
