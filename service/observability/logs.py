"""Log set-up for `maas serve`: JSON lines (one object per line, for log shippers) or plain text.

Every record logged while a request is being served carries that request's id. Anything that
looks like an API key (`mk_…`) or a bearer token is masked before a line is written: keys never
reach the logs, even by mistake.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import sys
from typing import Any, Literal

import orjson

from service.redaction import redact

LogFormat = Literal["json", "text"]

# Set by the request middleware for the duration of one request.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("maas_request_id", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra=` fields of a record, secrets masked."""
    fields: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _STANDARD or key.startswith("_"):
            continue
        fields[key] = redact(value) if isinstance(value, str) else value
    return fields


class RequestContextFilter(logging.Filter):
    """Stamps the current request id (if any) on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = request_id_var.get()
            if request_id is not None:
                record.request_id = request_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value …`, for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        fields = _fields(record)
        if fields:
            text += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return text


def configure_logging(level: str, log_format: LogFormat, stream: Any = None) -> None:
    """Route every logger (uvicorn's included) to one handler on stderr in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_log = logging.getLogger(name)
        uvicorn_log.handlers.clear()
        uvicorn_log.propagate = True
