"""Processes of a (possibly distributed) run and their seeding.

Run the same command under ``torchrun``; each process reads its share of the data (``DistributedSampler``),
DistributedDataParallel averages the gradients (NCCL on GPUs, gloo on CPU), and at the end the processes
compare a hash of their parameters and stop with an error if they differ.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clipwise.models.device import DeviceUnavailable, resolve_device


@dataclass(frozen=True)
class Processes:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def start(cls, device: str | None = None) -> Processes:
        """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo on CPU).

        ``device``: ``cpu``, ``cuda`` (this process's GPU: ``cuda:LOCAL_RANK``) or ``cuda:N`` (one process);
        default: ``cuda`` where CUDA is available, else ``cpu``. Raises ``clipwise.models.device.DeviceUnavailable`` for
        a GPU this machine does not have, or one GPU named for several processes.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        name = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if name == "cuda":
            name = f"cuda:{local_rank}"
        elif name.startswith("cuda:") and world_size > 1:
            raise DeviceUnavailable(f"device {name} names one GPU for {world_size} processes: use cuda (one GPU each)")
        chosen = resolve_device(name)
        if world_size == 1:
            return cls(device=chosen)
        cuda = chosen.type == "cuda"
        if cuda:
            torch.cuda.set_device(chosen)
        torch_dist.init_process_group("nccl" if cuda else "gloo")
        return cls(torch_dist.get_rank(), world_size, chosen)

    def stop(self) -> None:
        if self.distributed and torch_dist.is_initialized():
            torch_dist.destroy_process_group()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over processes."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor)
        return tensor.tolist()

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel when there are several processes (its trainable parameters
        at the time of the call are the ones it averages)."""
        if not self.distributed:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every process, in rank order."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(values, value)
        return values

    def check_in_sync(self, model: nn.Module) -> list[str]:
        """The parameter hash of every process; an error if they differ (under DDP they must not)."""
        digests = self.gather(parameters_sha256(model))
        if len(set(digests)) != 1:
            raise RuntimeError(f"the processes' weights diverged: parameter hashes {digests}")
        return digests


def parameters_sha256(model: nn.Module) -> str:
    """sha256 of every parameter's name and value."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        digest.update(name.encode() + parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch's generators (CPU and GPUs) for one epoch of one process."""
    torch.manual_seed(hash((seed, epoch, rank)) % 2**63)
