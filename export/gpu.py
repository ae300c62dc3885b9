"""Which executor AdaFuse's gated pairs run with on a device: the Triton kernels (``clipwise.export.triton_gating``) on
CUDA where Triton is installed, the eager executor elsewhere. Light to import: Triton loads only for CUDA."""

from __future__ import annotations

import contextlib
import importlib.util

import torch


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def gated_pairs_on(device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context in which AdaFuse's gated pairs run as they should on ``device``: the Triton kernels on CUDA
    with Triton installed (``clipwise.models.adafuse.executing_gated_pairs``), the eager executor otherwise."""
    if torch.device(device).type != "cuda" or not triton_installed():
        return contextlib.nullcontext()
    from clipwise.export.triton_gating import gated_conv_pair
    from clipwise.models.adafuse import executing_gated_pairs

    return executing_gated_pairs(gated_conv_pair)
