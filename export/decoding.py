"""From an exported graph's outputs to an execution record: executed GFLOPs per clip and the policy.

A graph returns logits and, for the adaptive families, the decisions it executed (``export.graphs``). The
figures are computed from those decisions by the model's own code, run on a meta-device twin of the
architecture (shapes only, no weights), so both backends report the same numbers for the same decisions:

* static families: every clip costs the full-compute figure; a model with a fixed policy (a frozen fusion
  strategy) reports the policy recorded at export;
* AdaFuse: ``AdaFuse.execution_of`` on the per-block decision codes (Eq. 5 as the gated blocks execute it);
* Ada3D: the selection net and the backbone under each clip's plan run on the twin inside
  ``models.flops.track_macs``, as ``Ada3D.execute`` runs them; the plans come from ``Actions.plans`` and the
  records from ``Plan.policy``. Costs are cached per plan.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from models.ada3d import Actions, Ada3D, Plan
from models.adafuse import AdaFuse
from models.base import VideoClassifier
from models.flops import meta_twin, track_macs
from models.policy import Policy

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


class AdaFuseDecoder:
    """Outputs: logits, then each gated block's (N, T, C) keep / reuse / skip codes."""

    def __init__(self, twin: AdaFuse) -> None:
        self.twin = twin

    def __call__(self, outputs: Sequence[np.ndarray]) -> Decoded:
        codes = [torch.from_numpy(block) for block in outputs[1:]]
        frames = codes[0].shape[1]
        return self.twin.execution_of(codes, frames, self.twin.config.size)


class Ada3DDecoder:
    """Outputs: logits, frames kept (N, T) and 3D stages on (N, S), booleans."""

    def __init__(self, twin: Ada3D) -> None:
        self.twin = twin
        frames, size = twin.config.frames, twin.config.size
        self.clip = torch.empty(1, 3, frames, size, size, device="meta")
        with torch.no_grad(), track_macs(1) as selection:
            twin.select(self.clip)
        self.selection_gflops = selection.gflops[0]

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - the decoder lives as long as its model is served
    def backbone_gflops(self, plan: Plan) -> float:
        with torch.no_grad(), track_macs(1) as backbone:
            self.twin.run_backbone(self.clip, [plan])
        return backbone.gflops[0]

    def __call__(self, outputs: Sequence[np.ndarray]) -> Decoded:
        _, frames, stages = outputs
        plans = Actions(torch.from_numpy(frames), torch.from_numpy(stages)).plans()
        gflops = [self.selection_gflops + self.backbone_gflops(plan) for plan in plans]
        return gflops, [plan.policy(frames.shape[1]) for plan in plans]


def decoder_for(model: VideoClassifier, full_gflops: float, static_policy: Policy | None) -> Decoder:
    """The decoder of the graph outputs of an export of ``model`` (which it counts on a meta-device twin of)."""
    if isinstance(model, AdaFuse | Ada3D):
        decoder = AdaFuseDecoder if isinstance(model, AdaFuse) else Ada3DDecoder
        return decoder(meta_twin(model))
    return StaticDecoder(full_gflops, static_policy)
