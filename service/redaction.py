"""Keys never reach a log line, an error message or a stored row: anything shaped like an API key
(`mk_…`) or a bearer token is replaced by `[redacted]`. One function serves every place."""

from __future__ import annotations

import logging
import re

KEY_PREFIX = "mk_"
REDACTED = "[redacted]"

_SECRET = re.compile(r"(?i)\b(" + re.escape(KEY_PREFIX) + r")[A-Za-z0-9_\-]+|(bearer\s+)\S+")


def redact(text: str) -> str:
    """`text` with API keys and bearer tokens masked."""
    return _SECRET.sub(lambda m: (m.group(1) or m.group(2)) + REDACTED, text)


class RedactKeys(logging.Filter):
    """A safety net for log lines we do not write ourselves (a key pasted into a URL ends up in
    the access log): anything shaped like a key is replaced. Arguments stay a tuple, as
    uvicorn's access formatter needs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_keys_in_logs() -> None:
    """Install `RedactKeys` on the loggers that echo request lines (idempotent)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())
