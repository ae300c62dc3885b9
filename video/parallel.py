"""Threads for decoding the independent pieces of one video at once, within a budget concurrent requests share.

PyAV releases the GIL while FFmpeg decodes, so threads that each drive their own demuxer and decoder over
the same in-memory bytes decode in parallel. A ``ThreadBudget`` bounds how many threads all requests
decode on together: a request always decodes on its own thread (the worker slot it runs in) and gets helper
threads only while the budget has some to spare, so N requests decoding at once hold at most the budget
plus N - 1 threads. A budget can be shared by processes too (``ThreadBudget.shared``): its count then lives
in shared memory, so requests decoding in several worker processes hold it together as threads of one
process would. ``share_work`` runs the workers over one queue of jobs, each taking the next job when
done with its last, so a worker slowed by other load on the machine simply does fewer.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.context import BaseContext
from typing import Protocol, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


class _Count(Protocol):
    """A count of threads in use and its lock: ``multiprocessing.Value``'s interface."""

    value: int

    def get_lock(self) -> contextlib.AbstractContextManager: ...


class _LocalCount:
    """A count for the threads of one process."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def get_lock(self) -> threading.Lock:
        return self._lock


class ThreadBudget:
    """At most ``threads`` decoding threads at once across the requests that share this budget."""

    def __init__(self, threads: int, in_use: _Count | None = None) -> None:
        if threads < 1:
            raise ValueError(f"a thread budget needs at least one thread, not {threads}")
        self.threads = threads
        self._in_use = in_use or _LocalCount()

    @classmethod
    def shared(cls, threads: int, context: BaseContext) -> ThreadBudget:
        """A budget the processes of ``context`` it is passed to when they start share with this one."""
        return cls(threads, context.Value("i", 0))

    @contextlib.contextmanager
    def lease(self, wanted: int) -> Iterator[int]:
        """Up to ``wanted`` threads for the duration of the block: the caller's own, plus helpers the budget
        can spare now (none while other requests hold it all)."""
        with self._in_use.get_lock():
            granted = max(1, min(wanted, self.threads - self._in_use.value))
            self._in_use.value += granted
        try:
            yield granted
        finally:
            with self._in_use.get_lock():
                self._in_use.value -= granted


SINGLE_THREAD = ThreadBudget(1)


class _JobQueue(Iterator[Job]):
    """Jobs taken one at a time by several threads; ``close`` hands out no more."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        self._jobs = deque(jobs)

    def __next__(self) -> Job:
        try:
            return self._jobs.popleft()  # atomic: no two threads get the same job
        except IndexError:
            raise StopIteration from None

    def close(self) -> None:
        self._jobs.clear()


def share_work(jobs: Sequence[Job], workers: Sequence[Callable[[Iterator[Job]], Result]]) -> list[Result]:
    """Run ``workers`` at once over one queue of ``jobs``: each gets an iterator that yields the next job not
    yet taken. The first worker runs in the calling thread, the others in threads of their own. Returns each
    worker's result; when one raises, the others are given no further job and the error is raised once all
    have stopped."""
    queue = _JobQueue(jobs)
    with ThreadPoolExecutor(max_workers=max(len(workers) - 1, 1)) as pool:
        helpers = [pool.submit(_stop_others_on_error, worker, queue) for worker in workers[1:]]
        first = _stop_others_on_error(workers[0], queue)  # on an error, leaving the pool waits for the helpers
        return [first, *(helper.result() for helper in helpers)]


def _stop_others_on_error(worker: Callable[[Iterator[Job]], Result], queue: _JobQueue[Job]) -> Result:
    try:
        return worker(queue)
    except BaseException:
        queue.close()
        raise
