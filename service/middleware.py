"""Request context: an id for every request, an access log line, closing connections whose body was not
read, and the last-resort 500.

The id is the client's ``X-Request-ID`` when it is sane (1-64 characters of ``[A-Za-z0-9._:-]``), a new
UUID otherwise; it is echoed in the ``X-Request-ID`` response header, in error bodies and in every log
line of the request. A response that starts before the request's body has ended is held back while the
rest of the body is read and dropped (at most the upload limit, for a few seconds), so that a client still
sending sees the answer rather than a reset connection, as a lingering close does; a refusal of the body
itself (413 too large, 408 too slow) reads nothing more. Where the body still has not ended, the response
carries ``Connection: close`` and the server closes the connection after it. An exception no
handler claimed is a server bug: its traceback is logged with the request id and the client gets a generic
500 error body.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipwise.service.errors import error_response
from clipwise.service.log import REQUEST_ID, request_id_for
from clipwise.service.log import REQUEST_ID_HEADER as HEADER

# polled every few seconds: logged at debug level
PROBES = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
BODY_REFUSALS = frozenset({408, 413})  # answers about the body itself: nothing more of it is read
DRAIN_SECONDS = 5.0

access_log = logging.getLogger("clipwise.access")
logger = logging.getLogger(__name__)


def has_body(scope: Scope) -> bool:
    headers = Headers(scope=scope)
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


class RequestContextMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it would run the app in another task and context).

    ``drain_bytes``: the most of an unread body read and dropped before an early answer.
    """

    def __init__(self, app: ASGIApp, drain_bytes: int) -> None:
        self.app = app
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_for(scope)
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status: int | None = None
        body_ended = not has_body(scope)

        async def receive_noting_the_end() -> Message:
            nonlocal body_ended
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_ended = True
            return message

        async def drain() -> None:
            """Read and drop the rest of the body, within the byte and time bounds."""
            dropped, deadline = 0, time.monotonic() + DRAIN_SECONDS
            while not body_ended and dropped <= self.drain_bytes:
                try:
                    message = await asyncio.wait_for(receive_noting_the_end(), deadline - time.monotonic())
                except TimeoutError:
                    return
                if message["type"] != "http.request":
                    return
                dropped += len(message.get("body", b""))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if not body_ended and status not in BODY_REFUSALS:
                    await drain()
                headers = MutableHeaders(scope=message)
                headers[HEADER] = request_id
                if not body_ended:
                    headers["Connection"] = "close"
            await send(message)

        try:
            await self.app(scope, receive_noting_the_end, send_with_id)
        except Exception:
            logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if status is not None:
                raise
            message = f"internal server error; quote request id {request_id} when reporting it"
            await error_response(500, "internal_error", message, path=scope["path"])(scope, receive, send_with_id)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            level = logging.DEBUG if scope["path"] in PROBES else logging.INFO
            access_log.log(level, "%s %s %s %.1f ms", scope["method"], scope["path"], status, elapsed_ms)
            REQUEST_ID.reset(token)
