"""A real server for the HTTP tests (an app under uvicorn on a free loopback port), a repository of one tiny
model for it to serve, the error-body check, and single-threaded torch for modules that run many small models
(several processes share this machine's few cores, and intra-op threads fighting over them make tiny models a
hundred times slower)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from fastapi import FastAPI

from clipwise.models import create_model
from clipwise.models.checkpoint import save_version
from clipwise.service.local import serve_in_thread, wait_until_ready
from clipwise.service.schemas import ErrorResponse


@contextlib.contextmanager
def serving(app: FastAPI, *, ready: bool = True) -> Iterator[httpx.Client]:
    """``app`` under uvicorn in a thread on a free loopback port; a client for it (after /readyz is 200)."""
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        if ready:
            wait_until_ready(url)
        yield client


def one_model_repository(root: Path, model: str, labels: list[str]) -> Path:
    """``root`` made a model repository holding one untrained version of ``model`` (weights of seed 0)."""
    torch.manual_seed(0)
    save_version(create_model(model, num_classes=len(labels)), labels, root, model, trained=False)
    return root


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def assert_error(response: httpx.Response, status: int, code: str) -> ErrorResponse:
    """The response is the documented error body with ``code`` and the request's id."""
    assert response.status_code == status, response.text
    body = ErrorResponse.model_validate_json(response.content)
    assert set(response.json()) == {"error"} and set(response.json()["error"]) == {"code", "message", "request_id"}
    assert body.error.code == code, body
    assert body.error.message
    assert body.error.request_id == response.headers["x-request-id"]
    return body


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """A module's tests on one torch thread, so the live server's and the test's work do not oversubscribe
    the cores; use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    with single_torch_thread():
        yield


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
