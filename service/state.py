"""What one running app holds: its settings, the model store, the admission count, the worker pool, the
batcher, its metrics, the decoding threads' budget, the decoder (a pool of processes, or this process), its
startup status and the repository watcher's count of completed polls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from clipwise.service.batching import Batcher
from clipwise.service.config import Settings
from clipwise.service.metrics import ServiceMetrics
from clipwise.service.model_store import ModelStore
from clipwise.service.slots import Admission, SlotPool
from clipwise.video.isolation import DecodePool, InProcess
from clipwise.video.parallel import ThreadBudget, usable_cpus


@dataclass
class Startup:
    """Progress of loading and warming up the default models."""

    status: Literal["loading", "ready", "failed"] = "loading"
    detail: str = "loading the default models"

    def loading(self, name: str) -> None:
        self.detail = f"loading {name}"

    def ready(self) -> None:
        self.status, self.detail = "ready", "ready"

    def failed(self, detail: str) -> None:
        self.status, self.detail = "failed", detail


@dataclass
class ServiceState:
    settings: Settings
    store: ModelStore
    admission: Admission
    slots: SlotPool
    batcher: Batcher
    metrics: ServiceMetrics
    decoder: DecodePool | InProcess
    startup: Startup = field(default_factory=Startup)
    watch_polls: int = 0  # polls the repository watcher has finished: to wait for one begun after a change

    @property
    def decode_threads(self) -> ThreadBudget:
        """The budget of decoding threads, the decoder's (shared by its workers)."""
        return self.decoder.threads

    @classmethod
    def from_settings(cls, settings: Settings, device: torch.device | None = None) -> ServiceState:
        """The state of an app serving with ``settings`` on ``device`` (default: the CPU)."""
        store = ModelStore(settings.model_repository, settings.max_concurrent_inferences, device or torch.device("cpu"))
        admission = Admission(settings.max_pending_requests)
        slots = SlotPool(settings.max_concurrent_inferences)
        return cls(
            settings=settings,
            store=store,
            admission=admission,
            slots=slots,
            batcher=Batcher(slots, settings),
            metrics=ServiceMetrics(store, admission),
            decoder=decoder(settings),
        )


def decoder(settings: Settings) -> DecodePool | InProcess:
    """The settings' decode workers, sharing one budget of decoding threads, or this process. A decode holds an
    inference slot while it runs: with the default of one worker per slot, the jobs at once (decodes and
    batches) stay the slots, and the decode threads the budget plus the slots less one."""
    threads = settings.decode_threads or usable_cpus()
    workers = settings.max_concurrent_inferences if settings.decode_workers is None else settings.decode_workers
    if workers == 0:
        return InProcess(ThreadBudget(threads))
    return DecodePool(workers, threads, settings.decode_deadline_s)
