"""An app served by uvicorn in a background thread on a free loopback port: for ``clipwise bench`` and tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, *, start_timeout_s: float = 60) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 in a daemon thread; yields its base URL once uvicorn listens, stops it on exit.

    Raises RuntimeError when the server does not start (its startup failed; the log says why).
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
            raise RuntimeError("the server did not start (its log says why)")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
