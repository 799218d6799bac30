"""Request bodies and numeric headers, read with bounds: nothing is trusted or buffered unchecked.

A body is refused (413) from its `Content-Length` before any of it is read, and counted while
it streams, so that a client that sends more than it declared (or declares nothing) is cut off
at the limit. Numeric headers are ASCII digits only, of bounded length: `int()` alone would take
`²`, `٣` or thousands of digits.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.requests import Request

from service.errors import InvalidRequest, PayloadTooLarge

MAX_DIGITS = 18  # fits a signed 64-bit integer; no header the gateway reads needs more
_DIGITS = frozenset("0123456789")


def parse_decimal(value: str, what: str) -> int:
    """A non-negative integer written with 1-18 ASCII digits (spaces around allowed), else 400."""
    text = value.strip(" \t")
    if not text or len(text) > MAX_DIGITS or not _DIGITS.issuperset(text):
        raise InvalidRequest(f"{what} must be a whole number of at most {MAX_DIGITS} ASCII digits")
    return int(text)


def declared_length(request: Request, limit: int) -> int | None:
    """The body's `Content-Length` (None without one); 413 when it says more than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    length = parse_decimal(declared, "Content-Length")
    if length > limit:
        raise PayloadTooLarge(f"request body is {length} bytes; the limit is {limit} bytes")
    return length


async def bounded_stream(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The body's chunks as they arrive: 413 from `Content-Length` before the first one is read,
    and as soon as the bytes received pass `limit`, whatever the header said."""
    declared_length(request, limit)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        yield chunk
