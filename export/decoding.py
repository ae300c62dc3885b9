"""From an exported graph's outputs to an execution record: executed GFLOPs per clip and the policy.

A graph returns logits and, for the adaptive families, the decisions it executed (``clipwise.export.graphs``). The
figures are computed from those decisions by the model's own code, run on a meta-device twin of the
architecture (shapes only, no weights), so both backends report the same numbers for the same decisions:

* static families: every clip costs the full-compute figure; a model with a fixed policy (a frozen fusion
  strategy) reports the policy recorded at export;
* gated pairs (``Capabilities.policy == "gated_pairs"``): the model's ``execution_of`` on the per-block
  decision codes and the union thresholds of the graph's gated nodes: what each node's ``If`` ran (union or
  dense) gives the executed GFLOPs, Eq. 5 the policy's;
* clip plans (``"clip_plans"``): each clip's plan (``Actions.plans``) costs what the model's ``plan_gflops``
  counts for it: the selection net and the backbone on the kept frames with the plan's 3D stages, exactly
  what the graph ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import onnx
import torch

from clipwise.export.calibration import union_thresholds
from clipwise.models.ada3d import Actions
from clipwise.models.base import VideoClassifier
from clipwise.models.flops import meta_twin
from clipwise.models.policy import Policy

Decoded = tuple[list[float], list[Policy] | None]


class Decoder(Protocol):
    """Turns a graph's outputs (logits first) into executed GFLOPs per clip and per-clip policies."""

    def __call__(self, outputs: Sequence[np.ndarray]) -> Decoded: ...


class StaticDecoder:
    """Every clip costs ``full_gflops``; ``policy`` (a fixed one, or None) is every clip's."""

    def __init__(self, full_gflops: float, policy: Policy | None = None) -> None:
        self.full_gflops = full_gflops
        self.policy = policy

    def __call__(self, outputs: Sequence[np.ndarray]) -> Decoded:
        clips = len(outputs[0])
        return [self.full_gflops] * clips, None if self.policy is None else [self.policy] * clips


class GatedPairDecoder:
    """Outputs: logits, then each gated block's (N, T, C) keep / reuse / skip codes."""

    def __init__(self, twin: VideoClassifier, union_below: Sequence[tuple[float, float]]) -> None:
        self.twin = twin
        self.union_below = list(union_below)
        frames, size = twin.config.frames, twin.config.size
        twin.block_costs(frames, size), twin.full_gflops(frames, size)  # counted now, not on the request path

    def __call__(self, outputs: Sequence[np.ndarray]) -> Decoded:
        codes = [torch.from_numpy(block) for block in outputs[1:]]
        frames = codes[0].shape[1]
        return self.twin.execution_of(codes, frames, self.twin.config.size, self.union_below)


class ClipPlanDecoder:
    """Outputs: logits, frames kept (N, T) and 3D stages on (N, S), booleans."""

    def __init__(self, twin: VideoClassifier) -> None:
        self.twin = twin
        twin.count_plan_costs()  # now rather than on the request path

    def __call__(self, outputs: Sequence[np.ndarray]) -> Decoded:
        _, frames, stages = outputs
        plans = Actions(torch.from_numpy(frames), torch.from_numpy(stages)).plans()
        policies = self.twin.policies(plans, frames.shape[1], self.twin.config.size)
        return [policy.gflops for policy in policies], policies


def decoder_for(
    model: VideoClassifier, full_gflops: float, static_policy: Policy | None, graph: onnx.ModelProto | None = None
) -> Decoder:
    """The decoder of the outputs of ``graph``, an export of ``model`` (which it counts on a meta-device twin
    of); gated pairs read their nodes' union thresholds from the graph."""
    policy = model.capabilities.policy
    if policy == "gated_pairs":
        # a graph exported under full compute has no gated node: every convolution ran dense
        thresholds = union_thresholds(graph) or [(0.0, 0.0)] * len(model.gated_blocks())
        return GatedPairDecoder(meta_twin(model), thresholds)
    if policy == "clip_plans":
        return ClipPlanDecoder(meta_twin(model))
    return StaticDecoder(full_gflops, static_policy)
