"""One metered request: `async with meter.request(...) as metered:` wraps everything a request
does after authentication. Inside, `claim` takes its Idempotency-Key (or finds the answer to
replay); on exit exactly one usage event is recorded, with the key's outcome, however the
request ended:

- `answer(body)` (a 200): priced, its usage (with the cost) put in the body, the body kept for
  replays; the event commits before the answer goes out;
- an error raised inside (a 4xx or 5xx, rate limits included): recorded at no charge with its
  status; a client error's answer is kept for replays, a server error frees the key for a retry;
- `client_left()` (499): nobody is listening; free, and the key is freed;
- a repeat of an Idempotency-Key (replayed, 409 while the first runs, 422 for another request)
  records nothing: the first request's event is the one billed.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson

from service.errors import CLIENT_CLOSED, Conflict, GatewayError, InvalidInput
from service.metering.idempotency import Claim, ClaimState, parse_idempotency_key
from service.metering.prices import format_micro
from service.metering.writer import Outcome, Usage
from service.serving.batching import Tally

if TYPE_CHECKING:
    from service.metering.meter import Meter


class MeteredRequest:
    """See the module. `tenant_id` None: not metered (a key of no tenant, or metering off)."""

    def __init__(
        self,
        meter: Meter,
        *,
        request_id: str,
        tenant_id: str | None,
        key_id: str,
        model: str,
        render_error: Callable[[GatewayError], bytes],
    ) -> None:
        self.meter = meter
        self.request_id = request_id
        self.tenant_id = tenant_id
        self.key_id = key_id
        self.model = model
        self.tally = Tally()  # inputs, compute and queue time, filled in while the request runs
        self._render_error = render_error
        self._key: str | None = None  # the Idempotency-Key this request claimed
        self._status: int | None = None  # how it ended, when it did not raise
        self._usage: Usage | None = None  # the answer's event, priced once (its cost is in the body)
        self._body: bytes | None = None
        self._repeat = False
        self.counts_quota = False  # an answer's inputs go on the tenant's monthly quota with its event

    @property
    def metered(self) -> bool:
        return self.tenant_id is not None

    async def __aenter__(self) -> MeteredRequest:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.tenant_id is None or self._repeat:
            return
        if exc is None:
            assert self._status is not None, "a request ends in an answer, an error or the client gone"
            usage = self._usage or self._event(self._status)
            quota = self.counts_quota and usage.status == 200
            await self.meter.record(usage, self._outcome(self._status, self._body), quota=quota)
            return
        if not isinstance(exc, Exception):
            return  # cancelled (the server is stopping): nothing was answered
        error = exc if isinstance(exc, GatewayError) else GatewayError("internal error")
        body = None if error.status_code >= 500 else self._render_error(error)
        await self.meter.record(self._event(error.status_code), self._outcome(error.status_code, body))

    async def claim(self, key: str, digest: str) -> Claim | None:
        """Claim `key` for this request (`digest`: the request's hash): None to run it, or the
        stored answer to replay; 422 when the key was used for another request, 409 while its
        first request runs."""
        parse_idempotency_key(key)
        assert self.tenant_id is not None, "only a metered request has keys to claim"
        claim = await self.meter.claim(self.tenant_id, key, digest, self.request_id)
        if claim.state is ClaimState.NEW:
            self._key = key
            return None
        self._repeat = True  # a repeat of a request with its own event, or a misused key: no event
        self.meter.metrics.replays.labels(
            "replayed" if claim.state is ClaimState.REPLAY else claim.state.value
        ).inc()
        if claim.state is ClaimState.MISMATCH:
            raise InvalidInput("this Idempotency-Key was used for a different request; use a new key")
        if claim.state is ClaimState.RUNNING:
            raise Conflict("a request with this Idempotency-Key is still running; retry later")
        return claim

    def answer(self, body: dict[str, Any]) -> bytes:
        """The 200 answer's JSON: `body` with its `usage` (inputs; compute and cost when metered),
        beside any usage of the body's own protocol (OpenAI's token counts)."""
        usage: dict[str, Any] = {**body.get("usage", {}), "inputs": self.tally.inputs}
        if self.tenant_id is not None:
            self._usage = self._event(200)
            usage.update(
                compute_ms=round(self._usage.compute_us / 1000, 3),
                cost_micro=self._usage.amount_micro,
                cost=format_micro(self._usage.amount_micro),
            )
        self._status = 200
        self._body = orjson.dumps({**body, "usage": usage})
        return self._body

    def client_left(self) -> int:
        """The client went away before the answer: recorded free, the key freed for a retry."""
        self._status = CLIENT_CLOSED
        return CLIENT_CLOSED

    def _event(self, status: int) -> Usage:
        assert self.tenant_id is not None
        return self.meter.usage(
            request_id=self.request_id,
            tenant_id=self.tenant_id,
            key_id=self.key_id,
            model=self.model,
            inputs=self.tally.inputs,
            status=status,
            tally=self.tally,
        )

    def _outcome(self, status: int, body: bytes | None) -> Outcome | None:
        """The key's outcome: the answer to replay, or (no body: server errors, client gone) freed."""
        if self._key is None:
            return None
        assert self.tenant_id is not None
        return Outcome(self.tenant_id, self._key, self.request_id, status, body, release=body is None)
