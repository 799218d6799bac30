"""What `Client` and `AsyncClient` share: settings, the request of each API call, the retry
policy and the retry loop itself. The loop is written once as a generator that yields steps
(send this request, sleep this long) and gets back outcomes; each client only runs the steps
with its own transport, so the logic cannot drift between sync and async."""

from __future__ import annotations

import os
import platform
import random
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from maas_client._version import __version__
from maas_client.errors import connection_error, error_from_response, parse_retry_after, unexpected_answer

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 2
RETRY_STATUSES = frozenset({429, 502, 503, 504})
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, or the gateway's `Retry-After` when it sends one.

    What is retried, at most `max_retries` times:
    - 429 (rate limit, concurrency cap) and 503 `overloaded` (queue full) or other 503s: the
      gateway refused the request before doing the work, so sending it again is safe;
    - 502, 504, connection errors and timeouts: always when the connection could not be opened
      (nothing was sent); otherwise (a proxy may have passed the request on) only for calls the
      gateway answers the same when repeated (GETs, DELETEs, predict, embed and fine-tune
      creation, which carry an `Idempotency-Key`), never for e.g. creating a key, which would
      make a second one.

    Never retried: 503 `model_unavailable` (the model failed to load and stays so until the
    gateway restarts: its `Retry-After` is a hint for a human, not for a loop), and any answer
    whose `Retry-After` is over `max_retry_after` (a spent monthly quota says "come back next
    month"): those raise at once, with `retry_after` set on the error.

    Without `Retry-After`, retry n (0-based) waits a uniformly random time in
    [0, min(max_delay, initial_delay * 2**n)]; with it, exactly `Retry-After` seconds.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0

    def delay(self, retry: int, retry_after: float | None, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number `retry` (0-based)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)  # call_steps never waits past the cap
        return rng() * min(self.max_delay, self.initial_delay * 2.0**retry)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One logical API call: the HTTP request to make and how to read a 2xx answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, str | int | float] | None = None
    json: Any = None
    content: bytes | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: Mapping[str, str | list[str]] | None = None  # form fields next to `files`
    headers: Mapping[str, str] = field(default_factory=dict)
    retry: bool = True
    replay_safe: bool = False  # the gateway answers a repeat of this call as it did the first

    def request_args(self) -> dict[str, Any]:
        """Keyword arguments for `httpx.Client.build_request` (also AsyncClient's), made once per
        logical call: a retry re-sends the same `Idempotency-Key` and the same bytes, so the
        gateway replays its first answer and never bills twice."""
        headers = dict(self.headers)
        if self.method != "GET":
            headers.setdefault(IDEMPOTENCY_HEADER, f"idem_{uuid.uuid4().hex}")
        if self.files is not None:
            # httpx draws a new multipart boundary per request; the gateway hashes the body to tell
            # a retry from a different request under the same key, so every try uses this one.
            headers.setdefault("Content-Type", f"multipart/form-data; boundary=maas-{uuid.uuid4().hex}")
        args: dict[str, Any] = {"method": self.method, "url": self.path, "headers": headers}
        for name in ("params", "json", "content", "files", "data"):
            value = getattr(self, name)
            if value is not None:
                args[name] = value
        return args


@dataclass(frozen=True)
class Send:
    """Step: send a request built from these `build_request` arguments."""

    request_args: dict[str, Any]


@dataclass(frozen=True)
class Sleep:
    """Step: wait this many seconds."""

    seconds: float


Outcome = httpx.Response | httpx.TransportError | None


def replay_safe(call: Call[Any]) -> bool:
    """May this call be sent again after it may have reached the gateway?"""
    return call.replay_safe or call.method in ("GET", "HEAD", "DELETE")


def never_sent(error: httpx.TransportError) -> bool:
    """True when the request cannot have reached the gateway: no connection was made."""
    return isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def retryable(response: httpx.Response, call: Call[Any]) -> bool:
    """429/502/503/504 are worth another try, except a model that failed to load (that lasts),
    and a 502/504 (a proxy's: the gateway may have done the work) for a call not replay-safe."""
    if response.status_code not in RETRY_STATUSES:
        return False
    if response.status_code in (502, 504) and not replay_safe(call):
        return False
    if response.status_code == 503:
        try:
            return bool(response.json()["error"]["type"] != "model_unavailable")
        except (ValueError, KeyError, TypeError):
            return True
    return True


def _wait_ok(response: httpx.Response, policy: RetryPolicy) -> bool:
    retry_after = parse_retry_after(response.headers)
    return retry_after is None or retry_after <= policy.max_retry_after


def call_steps(
    call: Call[T], policy: RetryPolicy, rng: Callable[[], float]
) -> Generator[Send | Sleep, Outcome, T]:
    """The retry loop of one call: yields `Send` (gets back a response or a transport error)
    and `Sleep` (gets back None); returns the parsed answer or raises a typed `MaasError`."""
    args = call.request_args()
    retry = 0
    while True:
        outcome = yield Send(args)
        assert outcome is not None
        if isinstance(outcome, httpx.TransportError):
            again = call.retry and (never_sent(outcome) or replay_safe(call))
            if not again or retry >= policy.max_retries:
                raise connection_error(outcome) from outcome
            yield Sleep(policy.delay(retry, None, rng))
        elif (
            call.retry
            and retry < policy.max_retries
            and retryable(outcome, call)
            and _wait_ok(outcome, policy)
        ):
            yield Sleep(policy.delay(retry, parse_retry_after(outcome.headers), rng))
        elif outcome.is_success:
            try:
                return call.parse(outcome)
            except (ValueError, KeyError, TypeError) as exc:
                raise unexpected_answer(outcome, exc) from exc
        else:
            raise error_from_response(outcome)
        retry += 1


def resolve_base_url(base_url: str | None) -> str:
    """The base URL argument, else MAAS_BASE_URL, else the local default."""
    return (base_url or os.environ.get("MAAS_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def resolve_api_key(api_key: str | None) -> str | None:
    """The API key argument, else MAAS_API_KEY, else None (only health checks work then)."""
    return api_key or os.environ.get("MAAS_API_KEY") or None


def default_headers(api_key: str | None) -> dict[str, str]:
    """Headers every request carries."""
    agent = f"maas-client/{__version__} python/{platform.python_version()} httpx/{httpx.__version__}"
    headers = {"Accept": "application/json", "User-Agent": agent}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def to_timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    """An httpx timeout from seconds (for connect, read, write and pool alike) or as given."""
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
