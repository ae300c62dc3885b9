"""Clipwise's part in Ray Serve's HTTP proxy (``clipwise.service.ray_serve``): one ``X-Request-ID`` per response, and
Clipwise's 503 where the proxy itself fails.

Ray's proxy adds an ``X-Request-ID`` of its own to every response, after the replica's, and gives no answer to
a request whose replica died (its server then says a bare 500). The proxy installs ``proxy_middlewares`` at
start when its node has ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=service.ray_proxy:proxy_middlewares``
(``clipwise.service.config.RAY_PROXY_ENVIRONMENT``). This module is light on purpose, starlette only: the proxy
routes requests and loads neither torch nor the app. The error bodies are those of ``clipwise.service.errors``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipwise.service.log import REQUEST_ID_HEADER, request_id_for

REPLICA_HEADER = "X-Clipwise-Replica"  # set by every replica on every response
RETRY_AFTER_S = 1
V2_ROOT = "/v2"  # the Open Inference Protocol's routes: its own error body, {"error": message}


def proxy_middlewares() -> list[Middleware]:
    """Ray Serve's HTTP proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``)."""
    return [Middleware(ProxyResponseMiddleware)]


class ProxyResponseMiddleware:
    """Around Ray's proxy: one ``X-Request-ID`` per response (the replica's, which Clipwise checked), and the
    proxy's own failures (no replica answered: it died, or the queue is full) as Clipwise's 503 with
    ``Retry-After``: the request can go to another replica."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = replaced = False

        async def send_fixed(message: Message) -> None:
            nonlocal started, replaced
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = list(_first_of(REQUEST_ID_HEADER, message["headers"]))
                replaced = REPLICA_HEADER not in Headers(raw=message["headers"]) and message["status"] >= 500
                if replaced:
                    await _unavailable(message["status"], scope)(scope, receive, send)
                    return
            if not (replaced and message["type"] == "http.response.body"):
                await send(message)

        await self.app(scope, receive, send_fixed)
        if not started:  # the replica died: Ray's proxy sends nothing
            await _unavailable(500, scope)(scope, receive, send)


def _first_of(name: str, headers: Iterable[tuple[bytes, bytes]]) -> Iterable[tuple[bytes, bytes]]:
    """``headers`` with the first ``name`` header only."""
    key, seen = name.lower().encode(), False
    for header in headers:
        if header[0].lower() == key:
            if seen:
                continue
            seen = True
        yield header


def _unavailable(status: int, scope: Scope) -> JSONResponse:
    """Clipwise's 503 for a request Ray's proxy failed with ``status`` (503: its queue was full)."""
    code, reason = ("overloaded", "all busy") if status == 503 else ("replica_unavailable", "stopped")
    message = f"no replica answered (the replicas are {reason}); try again"
    request_id = request_id_for(scope)  # Ray's own id when the client sent none
    headers = {REQUEST_ID_HEADER: request_id, "Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse(_error_body(scope["path"], code, message, request_id), 503, headers)


def _error_body(path: str, code: str, message: str, request_id: str) -> dict[str, Any]:
    if path == V2_ROOT or path.startswith(V2_ROOT + "/"):
        return {"error": message}
    return {"error": {"code": code, "message": message, "request_id": request_id}}
