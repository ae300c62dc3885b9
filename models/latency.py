"""Wall time of a model's own decisions against its full-compute path, measured the way users meet it.

``time_against_full`` runs one clip through the model as it decides (its learned policy, or a forced one) and
through its full-compute path (``VideoClassifier.full_compute``), alternating, after unmeasured warm-up
rounds, in this process, on the clip's device (a GPU's work waited for); medians. Static models have no
policy: both paths are the same.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from clipwise.models.base import VideoClassifier


@dataclass(frozen=True)
class PolicyTiming:
    """Median milliseconds of one clip under the model's policy and under full compute."""

    policy_ms: float
    full_ms: float

    @property
    def ratio(self) -> float:
        return self.policy_ms / self.full_ms


@torch.inference_mode()
def time_against_full(
    model: VideoClassifier,
    clip: torch.Tensor,
    *,
    repeats: int = 5,
    warmup: int = 1,
    policy: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> PolicyTiming:
    """Interleaved medians of ``model(clip)`` inside ``policy()`` (default: the model's own decisions) and
    inside ``model.full_compute()``."""
    paths = {"policy": policy, "full": model.full_compute}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for round_index in range(warmup + repeats):
        for name, context in paths.items():
            with context():
                started = time.perf_counter()
                model(clip)
                if clip.is_cuda:
                    torch.cuda.synchronize(clip.device)  # the kernels launched, finished
                elapsed = time.perf_counter() - started
            if round_index >= warmup:
                times[name].append(elapsed * 1000)
    return PolicyTiming(statistics.median(times["policy"]), statistics.median(times["full"]))
