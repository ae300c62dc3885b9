"""Reading request bodies cut at a size limit: a video upload (multipart/form-data, one file part kept) and a
raw body (the v2 protocol's inference requests).

FastAPI's ``UploadFile`` would spool the whole body to a temporary file before the endpoint runs. Here
the body is read as it arrives (multipart: python-multipart's streaming parser): a declared Content-Length
over the limit is refused before reading anything, and a body that grows past it is refused as soon as it
does, so no more than the limit is ever held, and held once: the bytes are appended to one buffer as they
arrive (never a list of chunks joined into a second copy); an upload's buffer is the shared memory its decode
worker maps (``clipwise.video.isolation.SharedBlock``). The whole body must arrive within a time limit (408
otherwise), so a client that stalls or trickles cannot hold its place for ever. Answered before its body
ended by a 413 or 408, the connection is closed (``clipwise.service.middleware``): the rest is never read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from clipwise.service.errors import ApiError
from clipwise.video.isolation import SharedBlock

FIELD = "file"
FRAMING_ALLOWANCE = 64 * 1024  # multipart boundaries, part headers and small extra fields


@dataclass
class Upload:
    """The uploaded file and how long receiving it took."""

    data: SharedBlock
    read_ms: float


def too_large(limit: int) -> ApiError:
    return ApiError(413, "upload_too_large", f"upload larger than the limit of {limit / (1 << 20):g} MiB")


class _FilePart:
    """Callbacks of the multipart parser that keep the bytes of the part named ``FIELD``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data: SharedBlock | None = None
        self.complete = False  # the part's closing boundary arrived
        self._capturing = False
        self._name = b""
        self._value = b""
        self._disposition = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._name.lower() == b"content-disposition":
            self._disposition = self._value
        self._name = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") != FIELD.encode():
            return
        if self.data is not None:
            raise ApiError(422, "validation_error", f"more than one '{FIELD}' part")
        self.data = SharedBlock()
        self._capturing = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._capturing:
            return
        assert self.data is not None
        if self.data.size + end - start > self.limit:
            raise too_large(self.limit)
        self.data.append(memoryview(data)[start:end])

    def _part_end(self) -> None:
        if self._capturing:
            self._capturing, self.complete = False, True


def _boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise ApiError(
            415, "unsupported_media_type", f"send the video as multipart/form-data with a part named '{FIELD}'"
        )
    return options[b"boundary"]


async def _limited_stream(request: Request, limit: int, timeout_s: float, allowance: int = 0) -> AsyncIterator[bytes]:
    """The body's chunks; 413 (for ``limit``) once it declares or reaches more than ``limit + allowance``, 408
    when it has not ended ``timeout_s`` after the first chunk was asked for."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + allowance:
        raise too_large(limit)
    deadline = asyncio.get_running_loop().time() + timeout_s
    chunks = aiter(request.stream())
    received = 0
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await anext(chunks, None)
        except TimeoutError:
            raise ApiError(408, "upload_timeout", f"the body did not arrive within {timeout_s:g} s") from None
        except ClientDisconnect:
            raise ApiError(400, "incomplete_upload", "the client disconnected before the body was complete") from None
        if chunk is None:
            return
        received += len(chunk)
        if received > limit + allowance:
            raise too_large(limit)
        yield chunk


async def read_body(request: Request, limit: int, timeout_s: float) -> bytearray:
    """The whole body, at most ``limit`` bytes (413 beyond) within ``timeout_s`` (408 beyond)."""
    body = bytearray()
    async for chunk in _limited_stream(request, limit, timeout_s):
        body += chunk
    return body


async def read_upload(request: Request, limit: int, timeout_s: float) -> Upload:
    """The bytes of the multipart part ``file``, at most ``limit`` of them (413 beyond), the body within
    ``timeout_s`` (408 beyond)."""
    started = time.perf_counter()
    part = _FilePart(limit)
    parser = MultipartParser(_boundary(request), part.callbacks())
    try:
        async for chunk in _limited_stream(request, limit, timeout_s, FRAMING_ALLOWANCE):
            parser.write(chunk)
        parser.finalize()
    except FormParserError as error:
        raise ApiError(400, "malformed_multipart", f"malformed multipart body: {error}") from None
    if part.data is None:
        raise ApiError(422, "validation_error", f"body.{FIELD}: a multipart part named '{FIELD}' is required")
    if not part.complete:
        raise ApiError(400, "malformed_multipart", f"the body ended inside the '{FIELD}' part")
    return Upload(part.data, (time.perf_counter() - started) * 1000)
