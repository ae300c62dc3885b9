"""Decoding in worker processes, so that a crash or a hang inside FFmpeg costs one upload, never the caller.

A ``DecodePool`` starts its workers once: processes forked from multiprocessing's forkserver, which has
imported this module (PyAV, numpy, torch) and nothing else of the caller, so a worker starts in milliseconds
and inherits none of the caller's threads. ``load_clips`` hands a job to an idle worker over its pipe: the
job's arguments pickled, and the upload — a ``SharedBlock``, written into shared memory as it arrived — by its
descriptor, sent along the pipe; the worker decodes the block in place with ``clipwise.video.load_clips`` and sends its
views back the same way, and the tensor the caller gets is that block, mapped, not copied. The blocks are
anonymous (``memfd_create``): nothing to size (a container's /dev/shm is often 64 MiB), no name to clean up,
and a block is freed once no process holds it, even when a worker is killed mid-job.

A worker that dies mid-job (a crash in FFmpeg, say) fails that job with ``VideoError("crashed")``; one that
has not answered ``deadline_s`` after its job was sent (stuck where the decode time limit, checked at every
packet, cannot reach) is killed, failing it with ``VideoError("overran")``. Either is replaced at once by a
fresh worker; no other job notices. ``InProcess`` decodes in the calling process instead, with the same
interface.

The workers share one budget of decoding threads (``ThreadBudget.shared``): a job decodes on its own thread
plus helpers while the budget has some to spare, so W workers decode on at most the budget plus W - 1
threads, as W requests decoding in one process would. Each runs torch (the views' resizing) on one thread.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import mmap
import multiprocessing
import os
import queue
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

import torch

from clipwise.video.clips import LoadedClips, load_clips
from clipwise.video.container import Buffer, DecodeLimits, VideoError
from clipwise.video.parallel import ThreadBudget
from clipwise.video.sampling import ClipSpec

_CONTEXT = multiprocessing.get_context("forkserver")
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Job:
    """What a worker needs besides the bytes."""

    size: int  # bytes of the upload, whose block's descriptor follows the job
    spec: ClipSpec
    clips: int
    crops: int
    limits: DecodeLimits


class _Overran(Exception):
    """The worker did not answer within the deadline."""


class SharedBlock:
    """Bytes in anonymous shared memory (``memfd_create``), written once: an upload as it arrives, or a worker's
    views. A decode worker maps the same memory through the descriptor; it is freed once no process holds it."""

    def __init__(self) -> None:
        self._file = os.fdopen(os.memfd_create("clipwise-decode", os.MFD_CLOEXEC), "r+b", buffering=0)
        self.size = 0

    @classmethod
    def of(cls, data: Any) -> SharedBlock:
        """A block holding a copy of a buffer's bytes."""
        block = cls()
        block.append(data)
        return block

    def append(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        self.size += len(view)
        while view:
            view = view[os.write(self.fileno(), view) :]

    def fileno(self) -> int:
        return self._file.fileno()

    def mapped(self) -> Buffer:
        """The bytes, mapped (not copied)."""
        return _mapped(self.fileno(), self.size)


class InProcess:
    """``load_clips`` in the calling thread, decoding within ``threads`` (no isolation)."""

    def __init__(self, threads: ThreadBudget) -> None:
        self.threads = threads

    def start(self) -> None:
        """Nothing to start."""

    def close(self) -> None:
        """Nothing to stop."""

    def load_clips(
        self, data: SharedBlock, spec: ClipSpec, *, clips: int, crops: int, limits: DecodeLimits
    ) -> LoadedClips:
        return load_clips(data.mapped(), spec, clips=clips, crops=crops, limits=limits, threads=self.threads)


class DecodePool:
    """``workers`` decoding processes sharing a budget of ``threads`` threads, each job answered within
    ``deadline_s``."""

    def __init__(self, workers: int, threads: int, deadline_s: float) -> None:
        if workers < 1:
            raise ValueError(f"a decode pool needs at least one worker, not {workers}")
        self.workers, self.deadline_s = workers, deadline_s
        self.threads = ThreadBudget.shared(threads, _CONTEXT)
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()  # the last used first: its caches are warm
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Start the workers (and, the first time in this process, the forkserver they are forked from)."""
        _CONTEXT.set_forkserver_preload([__name__])
        for _ in range(self.workers):
            self._idle.put(self._new_worker())

    def close(self) -> None:
        """Kill every worker, busy or not; a job in flight fails as crashed."""
        with self._lock:
            workers, self._all, self._closed = list(self._all), set(), True
        for worker in workers:
            worker.kill()

    def idle(self) -> int:
        """Workers waiting for a job."""
        return self._idle.qsize()

    def pids(self) -> list[int]:
        """The workers' process ids."""
        with self._lock:
            return sorted(worker.process.pid for worker in self._all if worker.process.pid is not None)

    def load_clips(
        self, data: SharedBlock, spec: ClipSpec, *, clips: int, crops: int, limits: DecodeLimits
    ) -> LoadedClips:
        """``clipwise.video.load_clips`` in an idle worker (waiting for one while all are busy). Raises what it raises;
        ``VideoError`` ``crashed`` when the worker dies, ``overran`` when it outlives the deadline."""
        worker = self._take()
        try:
            loaded = worker.run(_Job(data.size, spec, clips, crops, limits), data, self.deadline_s)
        except (EOFError, OSError) as error:
            self._replace(worker, f"failed mid-job ({error!r})")
            raise VideoError("crashed", "the decoder crashed on this video") from None
        except _Overran:
            self._replace(worker, f"overran the {self.deadline_s:g} s deadline")
            raise VideoError("overran", f"decoding did not end within the {self.deadline_s:g} s deadline") from None
        except BaseException:
            self._idle.put(worker)  # it answered: still good
            raise
        self._idle.put(worker)
        return loaded

    def _take(self) -> _Worker:
        """An idle worker that is alive (one that died while idle, killed from outside, is replaced first)."""
        worker = self._idle.get()
        while not worker.process.is_alive():
            self._replace(worker, "died while idle")
            worker = self._idle.get()
        return worker

    def _new_worker(self) -> _Worker:
        worker = _Worker(self.threads)
        with self._lock:
            self._all.add(worker)
        return worker

    def _replace(self, worker: _Worker, why: str) -> None:
        """Kill ``worker`` and start another in its place, unless the pool is closed."""
        worker.kill()
        logger.warning("decode worker %s %s (exit code %s); replaced", worker.process.pid, why, worker.process.exitcode)
        with self._lock:
            self._all.discard(worker)
            if self._closed:
                return
        self._idle.put(self._new_worker())


class _Worker:
    """One decoding process and the parent's end of its pipe."""

    def __init__(self, threads: ThreadBudget) -> None:
        self.connection, child = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(target=_serve, args=(child, threads), name="clipwise-decoder", daemon=True)
        self.process.start()
        child.close()

    def run(self, job: _Job, data: SharedBlock, deadline_s: float) -> LoadedClips:
        """Send the job and its bytes; the views and their description back, or the worker's ``VideoError``."""
        deadline = time.monotonic() + deadline_s
        self.connection.send(job)
        send_handle(self.connection, data.fileno(), 0)  # the destination is ignored on Linux
        reply = self._reply(deadline)
        if isinstance(reply, VideoError):
            raise reply
        if isinstance(reply, str):  # a bug, not the video's doing: the worker's traceback
            raise RuntimeError(f"the decode worker failed:\n{reply}")
        shape, fields = reply
        views = torch.frombuffer(_received_block(self.connection, math.prod(shape) * 4), dtype=torch.float32)
        return LoadedClips(clips=views.view(shape), **fields)

    def _reply(self, deadline: float) -> Any:
        if not self.connection.poll(max(deadline - time.monotonic(), 0)):
            raise _Overran
        return self.connection.recv()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.connection.close()


def _serve(connection: Connection, threads: ThreadBudget) -> None:
    """A worker's life: decode job after job until the parent closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    torch.set_num_threads(1)
    while True:
        try:
            job: _Job = connection.recv()
        except EOFError:
            return
        data = _received_block(connection, job.size)
        try:
            loaded = load_clips(data, job.spec, clips=job.clips, crops=job.crops, limits=job.limits, threads=threads)
        except VideoError as error:
            connection.send(error)
            continue
        except Exception:
            connection.send(traceback.format_exc())
            continue
        fields = {field.name: getattr(loaded, field.name) for field in dataclasses.fields(loaded)}
        views = fields.pop("clips").contiguous()
        block = SharedBlock.of(views.numpy())  # written before the reply, so that the caller wakes once for both
        connection.send((tuple(views.shape), fields))
        send_handle(connection, block.fileno(), 0)


def _received_block(connection: Connection, size: int) -> Buffer:
    """The ``SharedBlock`` whose descriptor came along the pipe, mapped; EOFError when the pipe closed."""
    try:
        block = recv_handle(connection)
    except (OSError, RuntimeError) as error:  # RuntimeError: the message carried no descriptor
        raise EOFError("the pipe closed before the block came") from error
    try:
        return _mapped(block, size)
    finally:
        os.close(block)


def _mapped(descriptor: int, size: int) -> Buffer:
    """``size`` bytes of a shared memory file, mapped at once (one call, not a fault a page)."""
    return mmap.mmap(descriptor, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE) if size else b""
