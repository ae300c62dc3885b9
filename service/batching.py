"""Dynamic batching: requests for the same model that arrive together run as one forward pass.

Requests are queued by (served version, backend, clip shape), so a batch never mixes versions — requests in
flight across a swap batch with their own version — backends or shapes. A batch leaves when it holds
``max_batch_size`` clips, when every request announced for its version and backend (``expecting``: admitted and
still decoding its video) has joined it, or when ``batch_window_ms`` has passed since its first request arrived.
So a lone request never waits, and under load a batch waits at most the window for requests about to
arrive. A queue runs one batch at a time: requests that arrive meanwhile form the next one, so batches grow
with the load. A request is never split; one larger than the limit runs alone.

The batch runs as one job of the worker pool, by the earliest deadline of its requests. Its ``Execution`` is
split back per request: logits, executed MACs and policies are per clip, so each request gets exactly what
its own clips computed (static models' MACs are shared evenly over the clips of a batch, which for clips of
one shape is each clip's own count). Families whose requests gain nothing from sharing a pass
(``ServedModel.batchable``), and every request while batching is off, run alone through the same path.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from clipwise.export.runtime import Backend
from clipwise.models.base import Execution
from clipwise.service.config import Settings
from clipwise.service.model_store import ServedModel
from clipwise.service.slots import SlotPool


@dataclass
class BatchResult:
    """One request's share of a batch."""

    execution: Execution
    queue_ms: float  # from submission to the start of its batch's forward pass
    inference_ms: float  # the batch's forward pass
    batch_size: int  # requests in the batch


@dataclass(eq=False)
class _Pending:
    clips: torch.Tensor
    deadline: float
    submitted: float = field(default_factory=time.perf_counter)
    result: asyncio.Future[BatchResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(frozen=True)
class _Key:
    served: ServedModel
    backend: Backend
    clip_shape: tuple[int, ...]


@dataclass(eq=False)
class _Queue:
    pending: deque[_Pending] = field(default_factory=deque)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # a request arrived, or one expected left
    drain: asyncio.Task | None = None  # held here: the event loop keeps only weak references to tasks

    def clips(self) -> int:
        return sum(request.clips.shape[0] for request in self.pending)

    def take(self, max_clips: int) -> list[_Pending]:
        """The oldest requests that fit in ``max_clips`` (at least one), leaving out those nobody awaits."""
        batch, clips = [], 0
        while self.pending and (not batch or clips + self.pending[0].clips.shape[0] <= max_clips):
            request = self.pending.popleft()
            if not request.result.done():
                batch.append(request)
                clips += request.clips.shape[0]
        return batch


class Batcher:
    """Groups the inference of concurrent requests into batches run in the worker slots of ``slots``."""

    def __init__(self, slots: SlotPool, settings: Settings) -> None:
        self.slots = slots
        self.enabled = settings.batching
        self.window_s = settings.batch_window_ms / 1000
        self.max_clips = settings.max_batch_size
        self._queues: dict[_Key, _Queue] = {}
        self._expected: Counter[tuple[ServedModel, Backend]] = Counter()

    @contextlib.contextmanager
    def expecting(self, served: ServedModel, backend: Backend) -> Iterator[None]:
        """Announce a request that will submit clips for ``served`` on ``backend`` within the block (it is
        decoding them): a batch of theirs waits for it, up to the window, rather than leaving without it."""
        announced = (served, backend)
        self._expected[announced] += 1
        try:
            yield
        finally:
            self._expected[announced] -= 1
            if not self._expected[announced]:
                del self._expected[announced]
            for key, queue in self._queues.items():
                if (key.served, key.backend) == announced:
                    queue.changed.set()

    async def execute(self, served: ServedModel, backend: Backend, clips: torch.Tensor, deadline: float) -> BatchResult:
        """Run ``clips`` on ``backend`` by ``deadline`` (event-loop time), batched with other requests when
        allowed. Raises the slot pool's ``ApiError`` (503, 504) or the backend's error."""
        request = _Pending(clips, deadline)
        if not (self.enabled and served.batchable):
            await self._run(backend, [request])
        else:
            self._enqueue(_Key(served, backend, tuple(clips.shape[1:])), request)
        return await request.result

    def _enqueue(self, key: _Key, request: _Pending) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
            # a fresh context: the batch belongs to no single request (nor its request id)
            queue.drain = asyncio.create_task(self._drain(key, queue), context=contextvars.Context())
        queue.pending.append(request)
        queue.changed.set()

    async def _drain(self, key: _Key, queue: _Queue) -> None:
        """Run the queue's batches one after the other until it is empty, then forget it."""
        try:
            while queue.pending:
                await self._fill(key, queue)
                batch = queue.take(self.max_clips)
                if batch:
                    await self._run(key.backend, batch)
        finally:
            del self._queues[key]

    async def _fill(self, key: _Key, queue: _Queue) -> None:
        """Wait until the queue holds a full batch, or every request announced for its version and backend
        waits in it, or the oldest request's window closes."""
        closes = queue.pending[0].submitted + self.window_s
        while queue.clips() < self.max_clips and len(queue.pending) < self._expected[key.served, key.backend]:
            left = closes - time.perf_counter()
            if left <= 0:
                return
            queue.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.changed.wait(), left)

    async def _run(self, backend: Backend, batch: list[_Pending]) -> None:
        """Run ``batch`` as one job and hand each request its share, or the job's error."""
        clips = torch.cat([request.clips for request in batch]) if len(batch) > 1 else batch[0].clips
        try:
            (execution, started, inference_ms), _ = await self.slots.run(
                lambda: _timed_execute(backend, clips), min(request.deadline for request in batch)
            )
        except Exception as error:
            for request in batch:
                if not request.result.done():
                    request.result.set_exception(error)
            return
        shares = split_execution(execution, [request.clips.shape[0] for request in batch])
        for request, share in zip(batch, shares, strict=True):
            if not request.result.done():
                queue_ms = (started - request.submitted) * 1000
                request.result.set_result(BatchResult(share, queue_ms, inference_ms, len(batch)))


def _timed_execute(backend: Backend, clips: torch.Tensor) -> tuple[Execution, float, float]:
    started = time.perf_counter()
    execution = backend.execute(clips)
    return execution, started, (time.perf_counter() - started) * 1000


def split_execution(execution: Execution, sizes: list[int]) -> list[Execution]:
    """The execution record of a batch cut into consecutive parts of ``sizes`` clips."""
    bounds = list(itertools.pairwise(itertools.accumulate(sizes, initial=0)))
    policy = execution.policy
    return [
        Execution(
            logits=logits,
            executed_gflops=execution.executed_gflops[start:end],
            full_gflops=execution.full_gflops,
            policy=None if policy is None else policy[start:end],
            policy_gflops=execution.policy_gflops[start:end],
        )
        for logits, (start, end) in zip(execution.logits.split(sizes), bounds, strict=True)
    ]
