"""Decoding in worker processes (``clipwise.video.isolation``): the same views as in-process, and a worker that crashes
or
hangs costs its own request only.

A crash is stood in for by SIGKILL, a hang by SIGSTOP, sent to a real worker while it holds a request. The
server runs one worker: of two requests sent while it is stopped, one is handed to it and the other waits,
and must be answered right once the worker is replaced.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
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
from live_server import assert_error, one_model_repository, serving, wait_for

from clipwise.models.checkpoint import load_version
from clipwise.service.app import create_app
from clipwise.service.config import Settings
from clipwise.video import ClipSpec, VideoError, load_clips
from clipwise.video.isolation import DecodePool, SharedBlock
from clipwise.video.parallel import ThreadBudget

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
    return one_model_repository(tmp_path_factory.mktemp("isolation") / "repository", MODEL, LABELS)


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


def right_answer(repository: Path, response: httpx.Response, data: bytes) -> None:
    assert response.status_code == 200, response.text
    served = load_version(repository, MODEL)
    expected = {served.version: in_process_scores(served, data, limits=LIMITS)}
    assert wrong_answer(response.json(), expected) is None


def two_requests_held(server: Server, requests: ThreadPoolExecutor, data: bytes) -> list[Future[httpx.Response]]:
    """Two requests sent while the one worker is stopped: one is handed to it, the other waits for it."""
    sent = [requests.submit(server.predict, data) for _ in range(2)]
    wait_for(lambda: server.held() == 2 and server.pool.idle() == 0, "both requests, one taking the worker")
    return sent


def failed_and_answered(sent: list[Future[httpx.Response]]) -> list[httpx.Response]:
    """The two responses, one that is not a 200 first (the checks that follow fail unless there is one of each)."""
    return sorted((future.result() for future in sent), key=lambda response: response.status_code == 200)


def test_a_worker_killed_mid_request_costs_that_request_only(
    server: Server, repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="clipwise.video.isolation")
    data, worker = coded_video(), server.worker()
    os.kill(worker, signal.SIGSTOP)
    with ThreadPoolExecutor(2) as requests:
        sent = two_requests_held(server, requests, data)
        assert server.client.get("/readyz").status_code == 200  # the server answers meanwhile
        os.kill(worker, signal.SIGKILL)
        failed, answered = failed_and_answered(sent)
    assert_error(failed, 422, "decoder_crashed")
    right_answer(repository, answered, data)
    assert server.worker() != worker
    assert f"decode worker {worker} failed mid-job" in caplog.text
    right_answer(repository, server.predict(data), data)


def test_a_worker_past_the_deadline_is_killed_and_replaced(server: Server, repository: Path) -> None:
    data, worker = coded_video(), server.worker()
    os.kill(worker, signal.SIGSTOP)
    with ThreadPoolExecutor(2) as requests:
        failed, answered = failed_and_answered(two_requests_held(server, requests, data))
    assert_error(failed, 504, "decode_deadline_exceeded")
    assert failed.elapsed.total_seconds() < DEADLINE_S + 2
    right_answer(repository, answered, data)
    assert server.worker() != worker
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
