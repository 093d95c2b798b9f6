"""Structured logs: one JSON object a line, every line carrying the request id."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from logging.handlers import WatchedFileHandler
from pathlib import Path
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("sluice_request_id", default=None)
# Set (never reset) by a stream that ends by dropping its connection on purpose (a drained
# text stream, a producer's abort): the server's request task then logs that the app
# "returned without completing response", which for that task is no error.
stream_cut_var: ContextVar[bool] = ContextVar("sluice_stream_cut", default=False)
_INCOMPLETE = "ASGI callable returned without completing response."

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "service", "request_id", ...extra}``."""

    def __init__(self, service: str = "sluice") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "service": self.service,
            "pid": record.process,
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            out["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in out and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _not_a_planned_cut(record: logging.LogRecord) -> bool:
    return not (record.msg == _INCOMPLETE and stream_cut_var.get())


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        request_id = request_id_var.get()
        return f"{base} [{request_id}]" if request_id else base


def configure_logging(
    service: str, level: str = "INFO", fmt: str = "json", file: Path | None = None
) -> None:
    """Send every logger (ours, uvicorn's, gunicorn's) to stderr, and ``file``, in one format."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(WatchedFileHandler(file))
    for handler in handlers:
        if fmt == "json":
            handler.setFormatter(JsonFormatter(service))
        else:
            handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers = handlers
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "gunicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    uvicorn_error = logging.getLogger("uvicorn.error")
    if _not_a_planned_cut not in uvicorn_error.filters:
        uvicorn_error.addFilter(_not_a_planned_cut)
    # One access line per request comes from sluice.request_context; uvicorn's would repeat it.
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    access.disabled = True
