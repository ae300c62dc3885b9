"""How the gated conv pair of an AdaFuse block runs at inference: the eager executor and the signature every
executor shares, chosen per context (``executing_gated_pairs``) so that concurrent requests are unaffected."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Protocol

import torch

from clipwise.models.adafuse_policy import active_record
from clipwise.models.flops import record_macs
from clipwise.models.folding import FoldedConv
from clipwise.models.gating import run_pair
from clipwise.models.gating_partitions import Decisions, PairCosts, uncalibrated_costs


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
    record = active_record()
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


def current_executor() -> GatedPairExecutor:
    """The executor gated pairs run with in this context (``gated_conv_pair`` unless one was set)."""
    return _pair_executor.get()
