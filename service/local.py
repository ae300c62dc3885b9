"""Serving on this machine for ``clipwise bench``, benchmarks and tests: an app under uvicorn in a background
thread on a free loopback port (``serve_in_thread``, ``local_server``), the one readiness wait for any
Clipwise server, in this process or not (``wait_until_ready``), and a free loopback port for a server that
binds its own (``free_port``)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import uvicorn
from fastapi import FastAPI

READY_POLL_S = 0.05


class NotReady(RuntimeError):
    """A server did not become ready: it gave up, or the time ran out; the message says why."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the system's choice), for a server that binds it itself."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, *, start_timeout_s: float = 60) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 in a daemon thread; yields its base URL once uvicorn listens, stops it on exit.

    Raises ``NotReady`` when the server does not start (its startup failed; the log says why).
    """
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that name it, and without it every
    # response on a kept-alive connection stalls 40 ms (Nagle's algorithm meets the client's delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))

    def run() -> None:
        with contextlib.suppress(SystemExit):  # uvicorn exits when the app's startup fails
            server.run(sockets=[sock])

    thread = threading.Thread(target=run, name="clipwise-local-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:
            raise NotReady("the server did not start (its log says why)")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_until_ready(url: str, timeout_s: float = 60, *, gave_up: Callable[[], str | None] = lambda: None) -> None:
    """Poll ``url``'s ``/readyz`` until it answers 200 (every default model loaded and warmed up).

    ``gave_up`` returns a reason when waiting longer is pointless (the server process exited, its startup
    failed); then, or after ``timeout_s``, ``NotReady`` is raised with the reason or the last answer.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        reason = gave_up()
        if reason is not None:
            raise NotReady(f"{url} will not become ready: {reason}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=10):
                return
        except urllib.error.HTTPError as error:  # 503 while loading, with the reason in the body
            last = f"{error.code}: {error.read()[:300].decode(errors='replace')}"
        except (OSError, ValueError) as error:
            last = f"{type(error).__name__}: {error}"
        time.sleep(READY_POLL_S)
    raise NotReady(f"{url} was not ready within {timeout_s:g} s: {last}")


@contextlib.contextmanager
def local_server(app: FastAPI, *, ready_timeout_s: float = 120) -> Iterator[str]:
    """A Clipwise ``app`` (``clipwise.service.app.create_app``) served in this process (``serve_in_thread``) once every
    default model is loaded and warmed up; yields its base URL, stops it on exit. Raises ``NotReady``."""
    startup = app.state.service.startup

    def failed() -> str | None:
        return startup.detail if startup.status == "failed" else None

    with serve_in_thread(app) as url:
        wait_until_ready(url, ready_timeout_s, gave_up=failed)
        yield url
