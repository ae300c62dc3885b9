"""Every error leaves as JSON ``{"error": {"code", "message", "request_id"}}``; under ``/v2`` (the Open
Inference Protocol) as that protocol's ``{"error": "message"}``.

Client mistakes map to 4xx here; the handlers cover the service's own errors, video errors, model store
errors, FastAPI's validation errors (422) and Starlette's routing errors (404, 405). A version in the
repository that cannot be served is the repository's fault: 502, with the version serving unchanged. Anything
else is a server bug: the request middleware logs its traceback and answers a generic 500.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipwise.service.log import REQUEST_ID
from clipwise.service.model_store import BackendNotAvailable, InvalidVersion, ModelNotFound
from clipwise.service.schemas import ErrorDetail, ErrorResponse
from clipwise.video import VideoError

# VideoError.reason -> (HTTP status, error code). Limits on the content answer 413 like the upload size:
# the remedy is the same (send less). A decode that overruns its time limit is the upload's doing too,
# so it is a 4xx (408), not a server error; so is a decoder that crashed on it (422). A decode killed at the
# worker's hard deadline is 504, as a request deadline missed while running.
VIDEO_ERRORS: dict[str, tuple[int, str]] = {
    "empty": (400, "empty_video"),
    "undecodable": (400, "undecodable_video"),
    "no_frames": (400, "no_frames"),
    "not_video": (415, "not_a_video"),
    "too_large": (413, "upload_too_large"),
    "too_long": (413, "video_too_long"),
    "too_many_pixels": (413, "too_many_pixels"),
    "timeout": (408, "decode_timeout"),
    "unreadable": (422, "unreadable_video"),
    "crashed": (422, "decoder_crashed"),
    "overran": (504, "decode_deadline_exceeded"),
}

logger = logging.getLogger(__name__)

HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
V2_ROOT = "/v2"

ERROR_DESCRIPTIONS = {
    400: "empty or undecodable video, no frames, malformed multipart body",
    401: "missing or wrong bearer token",
    403: "model management is disabled: no admin token is set",
    404: "unknown model or version",
    408: "the upload did not arrive within the upload time limit, or decoding overran the decode time limit",
    413: "upload, duration or frame size over its limit",
    415: "not a video (no video stream), or the body is not multipart/form-data",
    422: "invalid parameters, a backend the version cannot run on, a video whose reading failed unexpectedly "
    "(the stage named), or one the decoder crashed on",
    502: "the version in the repository cannot be served (manifest, weights or warm-up); the one serving is kept",
    503: "not ready, too many requests held, or no inference slot freed before the request deadline (Retry-After)",
    504: "the request deadline passed while the video was being processed, or its decode outran the hard deadline",
}


class ApiError(Exception):
    """An error answered to the client as-is."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, *, path: str = ""
) -> JSONResponse:
    """The JSON error body for the current request (its id from the request context); ``path`` picks the shape
    (the protocol's own under ``/v2/``). The log line has the status and code, not the message, which may
    quote the request's body (a v2 input name, say): bodies stay out of the logs."""
    logger.info("%d %s", status, code)
    if path == V2_ROOT or path.startswith(V2_ROOT + "/"):
        content: dict[str, Any] = {"error": message}
    else:
        content = ErrorResponse(error=ErrorDetail(code=code, message=message, request_id=REQUEST_ID.get())).model_dump()
    return JSONResponse(content, status_code=status, headers=dict(headers or {}))


def video_error(error: VideoError) -> ApiError:
    status, code = VIDEO_ERRORS.get(error.reason, (400, "undecodable_video"))
    return ApiError(status, code, str(error))


def as_api_error(error: Exception) -> ApiError | None:
    """The client-facing form of an error the handlers answer; None for anything else (a server bug)."""
    match error:
        case ApiError():
            return error
        case VideoError():
            return video_error(error)
        case ModelNotFound():
            return ApiError(404, error.code, str(error))
        case BackendNotAvailable():
            return ApiError(422, "backend_not_available", str(error))
        case InvalidVersion():
            return ApiError(502, "invalid_version", str(error))
    return None


def status_of(error: Exception) -> int:
    """The HTTP status an error is answered with."""
    answered = as_api_error(error)
    return 500 if answered is None else answered.status


def documented_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries: the error body for each status."""
    return {status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


def _describe_validation(error: RequestValidationError) -> str:
    problems = [f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()]
    return "; ".join(problems) or "invalid request"


async def _known_error(request: Request, error: Exception) -> JSONResponse:
    if isinstance(error, VideoError) and error.detail:  # an unexpected error reading the upload: its traceback
        logger.warning("an upload could not be read: %s\n%s", error, error.detail)
    answered = as_api_error(error)
    assert answered is not None  # registered only for the types as_api_error answers
    return error_response(answered.status, answered.code, answered.message, answered.headers, path=request.url.path)


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return error_response(422, "validation_error", _describe_validation(error), path=request.url.path)


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    code = HTTP_CODES.get(error.status_code, "http_error")
    return error_response(error.status_code, code, str(error.detail), error.headers, path=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    for error_type in (ApiError, VideoError, ModelNotFound, BackendNotAvailable, InvalidVersion):
        app.add_exception_handler(error_type, _known_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
