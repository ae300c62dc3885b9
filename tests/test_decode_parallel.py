"""clipwise.video.parallel and the parallel decoding path: the thread budget, the shared job queue, readers per
thread."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import clipwise.video.decode as video_decode
from clipwise.service.config import Settings
from clipwise.service.state import ServiceState
from clipwise.video import DecodeLimits, VideoError, read_frames
from clipwise.video.parallel import ThreadBudget, share_work
from clipwise.video.synthetic import read_frame_index

SPARSE_PLAN = [[5, 20, 21, 40, 59]]  # keyframes every 16 frames: runs [5], [20, 21], [40], [59]


def test_a_lease_gets_what_the_budget_spares_and_always_the_callers_own_thread():
    budget = ThreadBudget(3)
    with budget.lease(5) as first:
        with budget.lease(2) as second, budget.lease(2) as third:
            assert (first, second, third) == (3, 1, 1)
    with budget.lease(2) as again:
        assert again == 2  # every thread given back
    with pytest.raises(ValueError):
        ThreadBudget(0)


def test_workers_run_at_once_and_share_the_jobs():
    meeting = threading.Barrier(3, timeout=10)  # passes only when all three workers run at the same time

    def worker(jobs) -> tuple[int, list[int]]:
        meeting.wait()
        return threading.get_ident(), list(jobs)

    results = share_work(list(range(30)), [worker] * 3)
    assert results[0][0] == threading.get_ident()  # the first worker is the calling thread
    assert len({ident for ident, _ in results}) == 3
    assert sorted(job for _, taken in results for job in taken) == list(range(30))


def test_a_failing_worker_stops_the_others_and_its_error_is_raised():
    started = threading.Event()
    taken: list[int] = []

    def failing(jobs) -> None:
        started.wait(10)
        next(jobs)
        raise RuntimeError("broken")

    def steady(jobs) -> None:
        for job in jobs:
            taken.append(job)
            started.set()
            time.sleep(0.01)

    with pytest.raises(RuntimeError, match="broken"):
        share_work(list(range(1000)), [steady, failing])
    assert len(taken) < 100  # the queue was closed when the other worker failed


def opens_counted(monkeypatch) -> list[int]:
    """Counts the containers read_frames opens (the real ``_open_video``, wrapped)."""
    opened: list[int] = []
    real = video_decode._open_video

    def counting(data: bytes, limits: DecodeLimits):
        opened.append(threading.get_ident())
        return real(data, limits)

    monkeypatch.setattr(video_decode, "_open_video", counting)
    return opened


def test_runs_are_decoded_by_one_reader_per_thread_within_the_budget(monkeypatch, h264_video: Path):
    data = h264_video.read_bytes()
    opened = opens_counted(monkeypatch)
    alone = read_frames(data, lambda _: SPARSE_PLAN)
    assert len(opened) == 1
    opened.clear()
    parallel = read_frames(data, lambda _: SPARSE_PLAN, threads=ThreadBudget(3))
    assert 1 <= len(opened) <= 3 and len(set(opened)) == len(opened)  # a helper opens a container of its own
    assert {index: read_frame_index(frame) for index, frame in parallel.frames.items()} == {i: i for i in alone.frames}
    assert all(np.array_equal(parallel.frames[index], frame) for index, frame in alone.frames.items())
    assert parallel.frames_decoded == alone.frames_decoded
    opened.clear()
    read_frames(data, lambda _: [[40, 41]], threads=ThreadBudget(3))
    assert len(opened) == 1  # a single run: no helper


def test_a_helper_takes_runs_while_the_caller_decodes(monkeypatch, h264_video: Path):
    # the caller's first run waits until the helper holds a run: both must then decode for the plan to finish
    helper_started = threading.Event()
    real_read, real_helper = video_decode._FrameReader.read, video_decode._read_runs_elsewhere

    def helper(reader, data, limits, runs):
        return real_helper(reader, data, limits, (helper_started.set() or run for run in runs))

    def read(self, targets, *, fast):
        if threading.current_thread() is threading.main_thread():
            assert helper_started.wait(10)
        return real_read(self, targets, fast=fast)

    monkeypatch.setattr(video_decode, "_read_runs_elsewhere", helper)
    monkeypatch.setattr(video_decode._FrameReader, "read", read)
    opened = opens_counted(monkeypatch)
    decoded = read_frames(h264_video.read_bytes(), lambda _: SPARSE_PLAN, threads=ThreadBudget(2))
    assert len(opened) == 2 and len(set(opened)) == 2
    assert {index: read_frame_index(frame) for index, frame in decoded.frames.items()} == {
        index: index for index in SPARSE_PLAN[0]
    }


def test_a_budget_in_use_leaves_a_request_its_own_thread(monkeypatch, h264_video: Path):
    budget = ThreadBudget(2)
    opened = opens_counted(monkeypatch)
    with budget.lease(2):  # another request holds the whole budget
        decoded = read_frames(h264_video.read_bytes(), lambda _: SPARSE_PLAN, threads=budget)
    assert len(opened) == 1
    assert sorted(decoded.frames) == [5, 20, 21, 40, 59]


def test_the_decode_deadline_holds_in_every_thread(video_bytes_factory):
    data = video_bytes_factory(num_frames=600, gop=8)
    limits = DecodeLimits(decode_timeout_s=0.001)
    started = time.monotonic()
    with pytest.raises(VideoError) as error:
        read_frames(data, lambda n: [list(range(0, n, 3))], limits=limits, threads=ThreadBudget(2))
    assert error.value.reason == "timeout"
    assert time.monotonic() - started < 5


def test_the_service_shares_one_budget_of_decoding_threads(tmp_path: Path):
    assert ServiceState.from_settings(Settings(model_repository=tmp_path, decode_threads=3)).decode_threads.threads == 3
    default = ServiceState.from_settings(Settings(model_repository=tmp_path)).decode_threads
    assert default.threads == len(os.sched_getaffinity(0))
