"""Overload control: a bounded number of requests held, and their blocking work (decoding an upload, running
a batch) off the event loop, a bounded number at a time.

``Admission`` holds at most ``max_pending_requests`` inference requests, from their arrival to their answer:
one more is refused at once with 503 and Retry-After, before its body is read. So the memory held in uploads
stays bounded, and a client learns at once to come back instead of waiting in a queue that only grows.

A job must finish by its deadline (event-loop time, ``deadline_in``): waiting for one of ``slots`` worker
threads, then running. If no slot frees in time it is refused with 503 and Retry-After. Once running, work
cannot be interrupted: a job whose deadline passes mid-way is answered 504 while its thread finishes, still
holding its slot, so the number of concurrent jobs never exceeds ``slots``. Jobs run in a copy of the
caller's context (its request id).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from clipwise.service.errors import ApiError

T = TypeVar("T")
RETRY_AFTER_S = 1


def overloaded(message: str) -> ApiError:
    return ApiError(503, "overloaded", message, headers={"Retry-After": str(RETRY_AFTER_S)})


class Admission:
    """At most ``limit`` requests held at once (used from the event loop only, so a plain counter)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one place for the block; 503 with Retry-After when every place is held."""
        if self.active >= self.limit:
            raise overloaded(f"the server holds its limit of {self.limit} requests; retry shortly")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


def deadline_in(seconds: float) -> float:
    """The event-loop time ``seconds`` from now."""
    return asyncio.get_running_loop().time() + seconds


class SlotPool:
    """A pool of ``slots`` worker threads, each job admitted by its deadline: the service's worker slots."""

    def __init__(self, slots: int) -> None:
        self._slots = asyncio.Semaphore(slots)
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="clipwise-worker")

    async def run(self, work: Callable[[], T], deadline: float) -> tuple[T, float]:
        """Run ``work`` in a worker thread, finished by ``deadline``; returns its result and the milliseconds
        spent waiting for a slot."""
        loop = asyncio.get_running_loop()
        queued = time.perf_counter()
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise overloaded("every inference slot stayed busy until the request's deadline") from None
        queue_ms = (time.perf_counter() - queued) * 1000
        context = contextvars.copy_context()
        future = loop.run_in_executor(self._executor, context.run, work)
        future.add_done_callback(self._finished)
        done, _ = await asyncio.wait({future}, timeout=deadline - loop.time())  # never cancels the job
        if not done:
            raise ApiError(504, "deadline_exceeded", "the request's deadline passed while it was being processed")
        return future.result(), queue_ms

    def _finished(self, future: asyncio.Future) -> None:
        self._slots.release()
        if not future.cancelled():
            future.exception()  # retrieved here so an abandoned job's error is not reported as unhandled

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
