"""A request's deadline: read strictly from `X-Request-Timeout-Ms`, and held at every stage.

A deadline is a time on the monotonic clock (`time.monotonic()`, shared by the preprocessing
processes on the same machine). The batcher drops inputs whose deadline passed; decoding and
preprocessing check it before each input, and the route stops waiting for them when it passes,
so a request is answered 504 at its deadline whatever stage it is in.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

import anyio

from service.bodies import MAX_DIGITS, parse_decimal
from service.errors import DeadlineExceeded, GatewayError, InvalidInput

T = TypeVar("T")


def parse_timeout_ms(header: str | None, max_ms: int) -> int | None:
    """`X-Request-Timeout-Ms` as milliseconds (None when absent): 1 to `max_ms`, ASCII digits only."""
    if header is None:
        return None
    try:
        timeout_ms = parse_decimal(header, "X-Request-Timeout-Ms")
    except GatewayError:
        timeout_ms = 0
    if not 0 < timeout_ms <= max_ms:
        raise InvalidInput(
            f"X-Request-Timeout-Ms must be an integer from 1 to {max_ms} (at most {MAX_DIGITS} ASCII digits)"
        )
    return timeout_ms


def check_deadline(deadline: float, stage: str) -> None:
    """504 if `deadline` has passed; `stage` says where the request was (`"decoding input 3"`)."""
    if time.monotonic() >= deadline:
        raise DeadlineExceeded(f"the request's deadline passed while {stage}")


async def before_deadline(deadline: float, stage: str, work: Awaitable[T]) -> T:
    """Await `work`, or answer 504 when `deadline` passes first (the work is cancelled: a worker
    thread or process finishes at most its current input, then sees the deadline itself)."""
    with anyio.move_on_after(deadline - time.monotonic()) as scope:
        return await work
    assert scope.cancelled_caught
    raise DeadlineExceeded(f"the request's deadline passed while {stage}")
