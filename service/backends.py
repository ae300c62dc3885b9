"""The backends a served version can run on: ``clipwise.export.runtime``'s backends, opened once per loaded version,
and the choice of the one that serves it by default.

``torch`` (the model's own ``execute``) always; ``onnxruntime`` and ``openvino`` when the version directory
holds the ``model.onnx`` that ``clipwise export onnx`` wrote from its weights and the runtime is installed
(OpenVINO runs every family but AdaFuse). All return a ``clipwise.models.base.Execution``, so FLOPs and policies are
reported the same way whichever ran. A backend that is not available is kept with the reason, which is what a
request asking for it is told. A ``model.onnx`` ONNX Runtime cannot open makes the version invalid.

The manifest's ``backend`` is ``auto`` (the default) or one backend, which must then be available. With
``auto``, ``choose_backend`` times every available backend on the served clip shape — a few interleaved
rounds of one clip each, after the warm-up, bounded in time — and the fastest median serves; with a single
backend available there is nothing to time and it serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from clipwise.export.runtime import BACKENDS, MODEL_FILE, Backend, BackendUnavailable, interleaved_ms, open_backend
from clipwise.models.checkpoint import AUTO_BACKEND, CheckpointError, LoadedVersion

BackendName = Literal["torch", "onnxruntime", "openvino"]  # export.runtime.BACKENDS, as the API's type
BackendRequest = Literal["auto", "torch", "onnxruntime", "openvino"]  # a backend, or the one chosen at load
BackendLabel = Literal[  # export.runtime.LABELS: what a response names as the backend that ran
    "torch", "torch-cuda", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "openvino"
]  # fmt: skip
TIMING_ROUNDS = 5
TIMING_BUDGET_S = 10.0  # rounds stop once this is spent (at least one is run)


@dataclass(frozen=True)
class Backends:
    """The backends of one version, and why the others cannot run it."""

    available: dict[BackendName, Backend]
    unavailable: dict[BackendName, str]


def open_backends(loaded: LoadedVersion, concurrency: int = 1, device: torch.device | None = None) -> Backends:
    """Every backend that can run ``loaded`` on ``device`` (default: the CPU) with up to ``concurrency`` jobs at
    once; raises CheckpointError if the manifest's backend cannot, or if the version's ``model.onnx`` cannot be
    opened."""
    available: dict[BackendName, Backend] = {}
    unavailable: dict[BackendName, str] = {}
    for name in BACKENDS:
        try:
            available[name] = open_backend(loaded, name, device=device or torch.device("cpu"), concurrency=concurrency)
        except BackendUnavailable as reason:
            unavailable[name] = str(reason)
        except Exception as error:  # ONNX Runtime's own errors for a graph it cannot load (corrupt, invalid)
            raise CheckpointError(f"{loaded.path / MODEL_FILE}: {name} cannot open it: {error}") from None
    default = loaded.manifest.backend
    if default != AUTO_BACKEND and default in unavailable:
        raise CheckpointError(f"{loaded.path}: the manifest's backend {default} cannot run: {unavailable[default]}")
    return Backends(available, unavailable)


@dataclass(frozen=True)
class BackendChoice:
    """The backend serving a version by default, and why."""

    asked: BackendRequest  # the manifest's backend
    chosen: BackendName
    timings_ms: dict[BackendName, float] = field(default_factory=dict)  # median of one clip, per backend timed
    rounds: int = 0
    failure: str | None = None  # why the backends could not be timed

    @property
    def reason(self) -> str:
        if self.asked != AUTO_BACKEND:
            return f"the manifest names {self.asked}"
        if self.failure:
            return f"{self.chosen}: timing the backends failed ({self.failure})"
        if not self.timings_ms:
            return f"{self.chosen}, the only backend available"
        timings = ", ".join(f"{name} {ms:.1f} ms" for name, ms in sorted(self.timings_ms.items(), key=lambda x: x[1]))
        return f"fastest of {self.rounds} interleaved rounds of one clip (medians: {timings})"


def untimed_choice(asked: BackendRequest, failure: str | None = None) -> BackendChoice:
    """The manifest's backend without timings; for ``auto``, torch, which every version has."""
    return BackendChoice(asked, "torch" if asked == AUTO_BACKEND else asked, failure=failure)


def choose_backend(backends: Backends, asked: BackendRequest, clip_shape: Sequence[int]) -> BackendChoice:
    """The manifest's backend, or with ``auto`` the fastest available one on a clip of ``clip_shape``
    (C, T, H, W): ``TIMING_ROUNDS`` interleaved rounds within ``TIMING_BUDGET_S``, medians. Backends that
    cannot be timed (one fails) leave the manifest's backend, as ``untimed_choice`` gives it."""
    if asked != AUTO_BACKEND or len(backends.available) == 1:
        return untimed_choice(asked)
    clip = torch.randn(1, *clip_shape, generator=torch.Generator().manual_seed(0))
    calls = {name: (lambda backend=backend: backend.execute(clip)) for name, backend in backends.available.items()}
    try:
        timings, rounds = interleaved_ms(calls, TIMING_ROUNDS, TIMING_BUDGET_S)
    except Exception as error:  # a backend that passed its warm-up but fails on a random clip: keep the manifest's
        return untimed_choice(asked, f"{type(error).__name__}: {error}")
    return BackendChoice(asked, min(timings, key=timings.__getitem__), timings, rounds)
