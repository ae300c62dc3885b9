"""The device a model runs on, named as ``CLIPWISE_DEVICE`` and ``--device`` name it: ``cpu``, ``cuda`` or
``cuda:N``. ``resolve_device`` checks that it exists here and says plainly why not."""

from __future__ import annotations

import torch

DEVICE_HELP = "cpu, cuda or cuda:N"


class DeviceUnavailable(ValueError):
    """The device named does not exist on this machine (no CUDA, not that many GPUs), or is no device name."""


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` called ``name`` (``cuda`` is ``cuda:0``); raises ``DeviceUnavailable`` for another
    name or a GPU this machine does not have."""
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise DeviceUnavailable(f"device {name!r} is not one of {DEVICE_HELP}")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise DeviceUnavailable(
            f"device {name} asked for, but CUDA is not available here (torch {torch.__version__}, {build}; "
            "no GPU or driver seen): install a CUDA build of torch on a machine with an NVIDIA GPU, or use cpu"
        )
    index = device.index or 0
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailable(
            f"device {name} asked for, but this machine has {count} CUDA device(s): cuda:0 … cuda:{count - 1}"
        )
    return torch.device("cuda", index)
