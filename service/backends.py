"""The backends a served version can run on: ``export.runtime``'s runners, opened once per loaded version.

``torch`` (the model's own ``execute``) always; ``onnxruntime`` when the version directory holds the
``model.onnx`` that ``clipwise export onnx`` wrote from its weights and onnxruntime is installed. Both return a
``models.base.Execution``, so FLOPs and policies are reported the same way whichever ran. The manifest's
``backend`` names the default and must be available; a backend that is not is kept with the reason, which
is what a request asking for it is told. A ``model.onnx`` ONNX Runtime cannot open makes the version invalid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from export.runtime import BACKENDS, MODEL_FILE, BackendUnavailable, Runner, open_runner
from models.checkpoint import CheckpointError, LoadedVersion

BackendName = Literal["torch", "onnxruntime"]  # export.runtime.BACKENDS, as the API's type
BackendLabel = Literal["torch", "torch-cuda", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt"]  # .LABELS


@dataclass(frozen=True)
class Backends:
    """The runners of one version, and why the others cannot run it."""

    available: dict[BackendName, Runner]
    unavailable: dict[BackendName, str]


def open_backends(loaded: LoadedVersion, device: torch.device | None = None) -> Backends:
    """Every backend that can run ``loaded`` on ``device`` (default: the CPU); raises CheckpointError if the
    manifest's default cannot, or if the version's ``model.onnx`` cannot be opened."""
    available: dict[BackendName, Runner] = {}
    unavailable: dict[BackendName, str] = {}
    for name in BACKENDS:
        try:
            available[name] = open_runner(loaded, name, device=device or torch.device("cpu"))
        except BackendUnavailable as reason:
            unavailable[name] = str(reason)
        except Exception as error:  # ONNX Runtime's own errors for a graph it cannot load (corrupt, invalid)
            raise CheckpointError(f"{loaded.path / MODEL_FILE}: {name} cannot open it: {error}") from None
    default = loaded.manifest.backend
    if default in unavailable:
        raise CheckpointError(f"{loaded.path}: the manifest's backend {default} cannot run: {unavailable[default]}")
    return Backends(available, unavailable)
