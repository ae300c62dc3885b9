"""Logging: every line carries the id of the request it belongs to ("-" outside requests).

The id lives in a context variable set by ``service.middleware``; the inference executor runs each job
in a copy of the request's context, so lines logged while decoding carry it too. Request bodies are never
logged.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

REQUEST_ID: ContextVar[str] = ContextVar("clipwise_request_id", default="-")
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
