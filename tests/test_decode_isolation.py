"""Decoding in worker processes (``video.isolation``): the same views as in-process, and a worker that crashes or
hangs costs its own request only.

A crash is stood in for by SIGKILL, a hang by SIGSTOP, sent to a real worker while it holds a request. The
server runs one worker, so which worker holds which request is known: the first request sent takes it, a
second one waits for it, and is answered once the worker is replaced.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx
import pytest
import torch
from answers import in_process_scores, wrong_answer
from edge_cases import LIMITS, coded_video
from live_server import assert_error, serving, wait_for

from models import create_model
from models.checkpoint import load_version, save_version
from service.app import create_app
from service.config import Settings
from video import ClipSpec, VideoError, load_clips
from video.isolation import DecodePool, SharedBlock
from video.parallel import ThreadBudget

MODEL = "tsn_r18_tiny"
LABELS = [f"class_{i}" for i in range(5)]
PREDICT = f"/v1/models/{MODEL}/predict"
SPEC = ClipSpec("segments", 8, 1, 64, 64, (0.45, 0.45, 0.4), (0.22, 0.22, 0.22))
DEADLINE_S = 2.0

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    pool = DecodePool(workers=2, threads=1, deadline_s=DEADLINE_S)
    pool.start()
    yield pool
    pool.close()


def test_a_worker_gives_the_views_decoding_in_process_gives(pool: DecodePool) -> None:
    data = coded_video(container_format="matroska")
    expected = load_clips(data, SPEC, clips=2, crops=3, limits=LIMITS)
    got = pool.load_clips(SharedBlock.of(data), SPEC, clips=2, crops=3, limits=LIMITS)
    assert torch.equal(got.clips, expected.clips)
    assert (got.info, got.frame_indices, got.truncated) == (expected.info, expected.frame_indices, expected.truncated)


def test_a_refused_video_keeps_its_reason_and_its_worker(pool: DecodePool) -> None:
    workers = pool.pids()
    with pytest.raises(VideoError) as error:
        pool.load_clips(SharedBlock.of(b"not a video"), SPEC, clips=1, crops=1, limits=LIMITS)
    assert error.value.reason == "not_video"
    assert pool.pids() == workers


def test_a_worker_that_died_idle_is_replaced_before_it_takes_a_job(pool: DecodePool) -> None:
    os.kill(pool.pids()[0], signal.SIGKILL)
    for _ in range(3):  # whichever worker the queue hands out first
        loaded = pool.load_clips(SharedBlock.of(coded_video()), SPEC, clips=1, crops=1, limits=LIMITS)
        assert loaded.clips.shape == (1, 3, 8, 64, 64)
    assert len(pool.pids()) == 2


def hold_threads(budget: ThreadBudget, wanted: int, held: Event, release: Event) -> None:
    with budget.lease(wanted):
        held.set()
        release.wait(30)


def test_the_thread_budget_is_shared_by_processes() -> None:
    context = multiprocessing.get_context("forkserver")
    budget, held, release = ThreadBudget.shared(3, context), context.Event(), context.Event()
    holder = context.Process(target=hold_threads, args=(budget, 2, held, release))
    holder.start()
    try:
        assert held.wait(30)
        with budget.lease(3) as granted:
            assert granted == 1  # the other process holds 2 of the 3
    finally:
        release.set()
        holder.join(30)
    with budget.lease(3) as granted:
        assert granted == 3


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("isolation") / "repository"
    torch.manual_seed(0)
    save_version(create_model(MODEL, num_classes=len(LABELS)), LABELS, root, MODEL, trained=False)
    return root


@dataclass
class Server:
    client: httpx.Client
    pool: DecodePool  # the app's

    def worker(self) -> int:
        (pid,) = self.pool.pids()
        return pid

    def predict(self, data: bytes) -> httpx.Response:
        return self.client.post(PREDICT, params={"top_k": len(LABELS)}, files={"file": ("clip.mp4", data)})

    def held(self) -> float:
        """The server's gauge of the inference requests it holds."""
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith("clipwise_requests_in_progress "):
                return float(line.split()[-1])
        raise AssertionError("no clipwise_requests_in_progress in /metrics")


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[Server]:
    settings = Settings(
        model_repository=repository, decode_workers=1, decode_deadline_s=DEADLINE_S, max_pixels=LIMITS.max_pixels
    )
    app = create_app(settings)
    with serving(app) as client:
        yield Server(client, app.state.service.decoder)


def right_answer(server: Server, repository: Path, response: httpx.Response, data: bytes) -> None:
    assert response.status_code == 200, response.text
    served = load_version(repository, MODEL)
    expected = {served.version: in_process_scores(served, data, limits=LIMITS)}
    assert wrong_answer(response.json(), expected) is None


def one_held_by_the_worker_and_one_waiting(
    server: Server, pool: ThreadPoolExecutor, data: bytes
) -> tuple[Future[httpx.Response], Future[httpx.Response]]:
    """Two requests sent while the worker is stopped: the first is handed to it, the second waits for it."""
    first = pool.submit(server.predict, data)
    wait_for(lambda: server.held() == 1, "the first request")
    time.sleep(0.3)  # its upload read, its job sent to the stopped worker
    second = pool.submit(server.predict, data)
    wait_for(lambda: server.held() == 2, "the second request")
    time.sleep(0.3)
    return first, second


def test_a_worker_killed_mid_request_costs_that_request_only(
    server: Server, repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="video.isolation")
    data, worker = coded_video(), server.worker()
    os.kill(worker, signal.SIGSTOP)
    with ThreadPoolExecutor(2) as requests:
        first, second = one_held_by_the_worker_and_one_waiting(server, requests, data)
        assert server.client.get("/readyz").status_code == 200  # the server answers meanwhile
        os.kill(worker, signal.SIGKILL)
        assert_error(first.result(), 422, "decoder_crashed")
        right_answer(server, repository, second.result(), data)
    assert server.worker() != worker
    assert f"decode worker {worker} failed mid-job" in caplog.text
    right_answer(server, repository, server.predict(data), data)


def test_a_worker_past_the_deadline_is_killed_and_replaced(server: Server, repository: Path) -> None:
    data, worker = coded_video(), server.worker()
    os.kill(worker, signal.SIGSTOP)
    with ThreadPoolExecutor(2) as requests:
        first, second = one_held_by_the_worker_and_one_waiting(server, requests, data)
        started = time.monotonic()
        assert_error(first.result(), 504, "decode_deadline_exceeded")
        assert time.monotonic() - started < DEADLINE_S + 1
        right_answer(server, repository, second.result(), data)
    assert server.worker() != worker
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
