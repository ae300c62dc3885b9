"""Multiply-accumulate counting in the papers' "FLOPs" convention (thop / fvcore style).

Only the layers that do the arithmetic count: convolutions and linear layers, one MAC per weight use,
bias ignored. Batch norm, activations, pooling and additions are free, as in the papers.

Counting is analytic and always on the real execution path:

* ``track_macs(clips)`` installs one global forward hook for the duration of a forward pass. Every
  ``nn.Conv1d/2d/3d`` and ``nn.Linear`` called inside adds its MACs, computed from its input and output
  shapes, spread evenly over the clips of the batch.
* Modules that execute a policy-dependent subset of their work (gated convs of the adaptive families)
  do their arithmetic with functional calls and report what they really executed, per clip, with
  ``record_macs``. The hook never sees them, so nothing is counted twice.
* ``count_flops(model, frames, size)`` gives the full-compute figure without any arithmetic: the model
  runs on the meta device, where only shapes propagate.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class MacTracker:
    """MACs executed per clip during one forward pass."""

    def __init__(self, clips: int) -> None:
        self.clips = clips
        self.per_clip = torch.zeros(clips, dtype=torch.float64)

    def add(self, macs: float | torch.Tensor) -> None:
        """Add MACs: a number shared evenly by all clips, or a tensor with one entry per clip."""
        if isinstance(macs, torch.Tensor) and macs.numel() == self.clips:
            self.per_clip += macs.detach().to(torch.float64).reshape(self.clips).cpu()
        else:
            self.per_clip += float(macs) / self.clips

    @property
    def gflops(self) -> list[float]:
        return (self.per_clip / 1e9).tolist()


_active: ContextVar[MacTracker | None] = ContextVar("clipwise_mac_tracker", default=None)


def leaf_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one call of a conv or linear layer, from its output shape (0 for other layers)."""
    if isinstance(module, _CONV_TYPES):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return output.numel() * per_output
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def conv_macs(output_shape: torch.Size | tuple[int, ...], in_channels: int, kernel: tuple[int, ...]) -> int:
    """MACs of a dense convolution with ``in_channels`` inputs per output, for a given output shape."""
    return math.prod(output_shape) * in_channels * math.prod(kernel)


def _count_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    tracker = _active.get()
    if tracker is not None and isinstance(output, torch.Tensor):
        macs = leaf_macs(module, output)
        if macs:
            tracker.add(macs)


class _SharedHook:
    """One global forward hook, installed while any thread tracks: each call counts once, into the
    tracker of the thread (context) that made it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._handle is None:
                self._handle = nn.modules.module.register_module_forward_hook(_count_hook)

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._handle is not None:
                self._handle.remove()
                self._handle = None


_shared_hook = _SharedHook()


@contextlib.contextmanager
def track_macs(clips: int) -> Iterator[MacTracker]:
    """Count the MACs of every forward pass run inside the block, per clip of a batch of ``clips``.

    Thread-safe: concurrent blocks in other threads count into their own trackers. Nested blocks count
    into their own tracker only; the caller adds the inner figures where they belong.
    """
    tracker = MacTracker(clips)
    token = _active.set(tracker)
    _shared_hook.acquire()
    try:
        yield tracker
    finally:
        _shared_hook.release()
        _active.reset(token)


def record_macs(macs: float | torch.Tensor) -> None:
    """Report MACs executed outside nn.Conv/nn.Linear calls (a number, or one value per clip)."""
    tracker = _active.get()
    if tracker is not None:
        tracker.add(macs)


def is_tracking() -> bool:
    """True inside ``track_macs``: gated modules may skip building per-clip figures otherwise."""
    return _active.get() is not None


@dataclass(frozen=True)
class FlopCount:
    """Full-compute cost of one clip."""

    gflops: float
    params_m: float


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the meta device (shapes, no storage), in eval mode; the live model is never touched.

    A model built from a config (``type(model)(model.config)``, every zoo model) is rebuilt from it on the meta
    device, which costs nothing; a module whose structure its config does not describe (edited after
    construction, or with no config) is copied, then moved.
    """
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config):
        with torch.device("meta"):
            twin = type(model)(config)
        if _shapes(twin) == _shapes(model):
            return twin.eval()
    return copy.deepcopy(model).to("meta").eval()


def _shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in [*model.named_parameters(), *model.named_buffers()]}


def count_flops(model: nn.Module, frames: int, size: int, channels: int = 3) -> FlopCount:
    """Full-compute GMACs of one clip of ``frames`` x ``size``² and the parameter count, shapes only.

    Runs a meta-device twin of the model, so it is safe while the model serves requests. Adaptive models
    run with their keep-everything policy (``full_compute``): the figure an executed count is compared with.
    """
    twin = meta_twin(model)
    full_compute = getattr(twin, "full_compute", contextlib.nullcontext)  # adaptive models keep everything
    clip = torch.empty(1, channels, frames, size, size, device="meta")
    with torch.no_grad(), full_compute(), track_macs(1) as tracker:
        twin(clip)
    return FlopCount(gflops=tracker.per_clip.item() / 1e9, params_m=count_params(model) / 1e6)
