"""PyTorchVideo's own hub models for the import tests and ``benchmarks/imports.py``, with randomised weights.

PyTorchVideo 0.1.5 (the dev extra) imports torchvision in one place only: ``pytorchvideo/models/head.py`` takes
``torchvision.ops.RoIAlign`` for its detection head. torchvision's PyPI wheel does not import beside Clipwise's
CPU torch, so ``hub()`` imports ``pytorchvideo.models.hub`` with a stand-in ``torchvision.ops`` whose
``RoIAlign`` refuses to be built: the classification models built here (X3D, Slow, I3D) never build one, and a
model that did would fail loudly instead of running a fake. The stand-in is gone from ``sys.modules`` after
the import.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn


class RoIAlignStandIn(nn.Module):
    """Takes torchvision.ops.RoIAlign's place at import; building it is an error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("torchvision.ops.RoIAlign stand-in: the detection head is not available here")


def hub() -> types.ModuleType:
    """``pytorchvideo.models.hub``, imported with the RoIAlign stand-in (see the module docstring)."""
    ops = types.ModuleType("torchvision.ops")
    ops.RoIAlign = RoIAlignStandIn
    torchvision = types.ModuleType("torchvision")
    torchvision.ops = ops
    with mock.patch.dict(sys.modules, {"torchvision": torchvision, "torchvision.ops": ops}):
        from pytorchvideo.models import hub as hub_module
    return hub_module


# PyTorchVideo hub builder → (Clipwise preset, clip shape (T, S) the builder's head pools over in one window)
MODELS = {
    "x3d_s": ("x3d_s", (13, 160)),
    "x3d_m": ("x3d_m", (16, 224)),
    "x3d_l": ("x3d_l", (16, 312)),
    "slow_r50": ("slowonly_r50", (8, 224)),
    "i3d_r50": ("i3d_r50", (8, 224)),
}


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with every BN's affine parameters and running statistics, and every bias, drawn at
    random (the builders' init leaves them at 1 / 0, which would hide a BN or bias put in the wrong place)."""
    generator = torch.Generator().manual_seed(seed)

    def draw(tensor: torch.Tensor, low: float, high: float) -> None:
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                draw(module.weight, 0.5, 1.5)
                draw(module.running_var, 0.5, 2.0)
                draw(module.running_mean, -0.5, 0.5)
                draw(module.bias, -0.5, 0.5)
            elif getattr(module, "bias", None) is not None:
                draw(module.bias, -0.1, 0.1)
    return model.eval()


def save_hub_checkpoint(model: nn.Module, path: Path) -> Path:
    """The model's state dict in PyTorchVideo's hub format, ``{"model_state": ...}``."""
    torch.save({"model_state": model.state_dict()}, path)
    return path


@torch.no_grad()
def hub_logits(model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """The logits of a PyTorchVideo classifier: its projection's output (the X3D head's softmax comes after it)
    averaged over the head's output positions (one at the builders' clip shape)."""
    captured = []
    handle = model.blocks[-1].proj.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        model(clips)
    finally:
        handle.remove()
    return captured[0].flatten(1, -2).mean(1)  # (N, T, H, W, K) → (N, K)
