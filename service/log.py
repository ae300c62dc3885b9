"""Logging: every line carries the id of the request it belongs to ("-" outside requests).

The id lives in a context variable set by ``clipwise.service.middleware``; the inference executor runs each job
in a copy of the request's context, so lines logged while decoding carry it too. Request bodies are never
logged. ``request_id_for`` is the rule for a request's id (here, light, for Ray Serve's proxy too).
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from starlette.datastructures import Headers
from starlette.types import Scope

REQUEST_ID: ContextVar[str] = ContextVar("clipwise_request_id", default="-")
REQUEST_ID_HEADER = "X-Request-ID"
SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record that passes the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def configure_logging(level: str) -> None:
    """One stderr handler on the root logger; uvicorn's loggers (left unconfigured) propagate to it."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def request_id_for(scope: Scope) -> str:
    """The id of an HTTP request: its ``X-Request-ID`` header by ``request_id_from``."""
    return request_id_from(Headers(scope=scope).get(REQUEST_ID_HEADER))


def request_id_from(incoming: str | None) -> str:
    """The client's id (a header, gRPC metadata) when it is sane (1-64 characters of ``[A-Za-z0-9._:-]``), a new
    id otherwise."""
    return incoming if incoming and SANE_ID.fullmatch(incoming) else uuid.uuid4().hex
