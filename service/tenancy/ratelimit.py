"""Rate limits: a token bucket per key and per tenant, and a cap on a tenant's requests in flight.

Buckets live in this process (`MemoryBuckets`) or, with `MAAS_REDIS_URL`, in Redis
(`RedisBuckets`: one atomic Lua script per check, so every replica draws from the same bucket).
When Redis cannot be reached the check fails open by default (the request goes through, a
warning is logged and `maas_ratelimit_backend_errors_total` counts it); `MAAS_REDIS_FAIL_OPEN=false`
answers 503 instead. With several front-end workers, one gateway's workers share their buckets
(unless Redis keeps them) and the in-flight counts in memory (service/tenancy/shared_limits.py);
else the in-flight cap is counted per process.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import RedisError

from service.errors import LimiterUnavailable, RateLimited
from service.settings import Settings
from service.tenancy.principal import Principal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bucket:
    """One token bucket: `rate` tokens a second, holding at most `burst`."""

    name: str  # key:<key id> or tenant:<tenant id>: never the key itself
    rate: float
    burst: float


@dataclass(frozen=True)
class Verdict:
    """The answer for one request, described by its tightest bucket."""

    allowed: bool
    limit: int  # that bucket's burst
    remaining: int  # whole tokens left in it
    reset_s: float  # until it is full again
    retry_after_s: float  # until the request would be allowed (0 when it is)
    known: bool = True  # False when the limiter could not be asked (Redis down, failing open)

    def headers(self) -> dict[str, str]:
        if not self.known:
            return {}  # better no headers than made-up ones
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_s)),
        }


def refilled(bucket: Bucket, tokens: float, at: float, now: float) -> float:
    """`bucket`'s tokens at `now`, from `tokens` counted at `at`: refilled at its rate, up to its burst."""
    return min(bucket.burst, tokens + max(0.0, now - at) * bucket.rate)


def decide(buckets: Sequence[Bucket], tokens: Sequence[float]) -> tuple[Verdict, list[float]]:
    """Given each bucket's tokens now (refilled), take one from each if all have one: the verdict
    and the tokens to store. All or nothing, so a refused request costs no bucket anything."""
    allowed = all(t >= 1 for t in tokens)
    after = [t - 1 for t in tokens] if allowed else list(tokens)
    retry = max(((1 - t) / b.rate for b, t in zip(buckets, tokens, strict=True) if t < 1), default=0.0)
    tight = min(range(len(buckets)), key=lambda i: after[i] / buckets[i].burst)
    bucket, left = buckets[tight], after[tight]
    verdict = Verdict(
        allowed=allowed,
        limit=max(1, math.floor(bucket.burst)),
        remaining=max(0, math.floor(left)),
        reset_s=max(0.0, (bucket.burst - left) / bucket.rate),
        retry_after_s=retry,
    )
    return verdict, after


class Buckets(Protocol):
    async def take(self, buckets: Sequence[Bucket]) -> Verdict: ...

    async def close(self) -> None: ...


class MemoryBuckets:
    """Buckets in this process. `clock` is injectable so tests can move time by hand."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._state: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)
        self._lock = threading.Lock()

    async def take(self, buckets: Sequence[Bucket]) -> Verdict:
        return self.take_now(buckets)

    async def close(self) -> None:
        pass

    def take_now(self, buckets: Sequence[Bucket]) -> Verdict:
        with self._lock:
            now = self._clock()
            tokens = []
            for b in buckets:
                held, at = self._state.get(b.name, (b.burst, now))
                tokens.append(refilled(b, held, at, now))
            verdict, after = decide(buckets, tokens)
            for b, t in zip(buckets, after, strict=True):
                self._state[b.name] = (t, now)
            return verdict


# KEYS: the buckets; ARGV: rate1, burst1, rate2, burst2, …  Time is Redis's own (TIME), so that
# replicas with skewed clocks still agree. Returns allowed, then each bucket's tokens as strings
# (Lua numbers would come back truncated to integers).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens = {}
local allowed = 1
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local held = tonumber(state[1]) or burst
  local at = tonumber(state[2]) or now
  tokens[i] = math.min(burst, held + math.max(0, now - at) * rate)
  if tokens[i] < 1 then allowed = 0 end
end
local answer = {allowed}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  answer[i + 1] = tostring(tokens[i])
  if allowed == 1 then tokens[i] = tokens[i] - 1 end
  redis.call('HSET', key, 'tokens', tostring(tokens[i]), 'at', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
end
return answer
"""


class RedisBuckets:
    """Buckets in Redis, shared by every gateway process that uses the same Redis."""

    def __init__(
        self, client: aioredis.Redis, *, fail_open: bool, errors: Counter, prefix: str = "maas:rl:"
    ) -> None:
        self._client = client
        self._script = client.register_script(_TAKE)  # EVALSHA, loading the script when Redis lacks it
        self._fail_open = fail_open
        self._errors = errors
        self._prefix = prefix
        self._last_warning = 0.0

    async def take(self, buckets: Sequence[Bucket]) -> Verdict:
        args: list[Any] = []
        for b in buckets:
            args += [repr(float(b.rate)), repr(float(b.burst))]
        try:
            answer = await self._script(keys=[self._prefix + b.name for b in buckets], args=args)
        except (RedisError, OSError) as exc:
            self._errors.inc()
            if time.monotonic() - self._last_warning > 10:  # one line per 10 s, not one per request
                self._last_warning = time.monotonic()
                log.warning(
                    "rate limiter: Redis unreachable (%s); failing %s",
                    type(exc).__name__,
                    "open" if self._fail_open else "closed",
                )
            if self._fail_open:
                return Verdict(True, 0, 0, 0.0, 0.0, known=False)
            raise LimiterUnavailable("rate limiter unavailable; try again shortly") from None
        tokens = [float(t) for t in answer[1:]]
        verdict, _ = decide(buckets, tokens)
        return verdict

    async def close(self) -> None:
        await self._client.aclose()


class InFlight:
    """Requests in flight per tenant, in this process."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, tenant: str, cap: int) -> bool:
        with self._lock:
            if self._counts.get(tenant, 0) >= cap:
                return False
            self._counts[tenant] = self._counts.get(tenant, 0) + 1
            return True

    def leave(self, tenant: str) -> None:
        with self._lock:
            self._counts[tenant] -= 1
            if not self._counts[tenant]:
                del self._counts[tenant]

    def count(self, tenant: str) -> int:
        with self._lock:
            return self._counts.get(tenant, 0)

    async def acquire(self, tenant: str, cap: int) -> bool:
        return self.enter(tenant, cap)

    async def release(self, tenant: str) -> None:
        self.leave(tenant)


class Slots(Protocol):
    """Where a tenant's requests in flight are counted: this process (`InFlight`), or a table
    in shared memory that every worker of a gateway maps (`SharedSlots`)."""

    async def acquire(self, tenant: str, cap: int) -> bool: ...

    async def release(self, tenant: str) -> None: ...


class LimitMetrics:
    """The limiter's collectors, made once per app (a restarted lifespan reuses them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter(
            "maas_rate_limited",
            "Requests refused with 429, by reason (rate, concurrency, quota).",
            ["reason"],
            registry=registry,
        )
        self.backend_errors = Counter(
            "maas_ratelimit_backend_errors",
            "Rate-limit checks that could not reach Redis (answered per MAAS_REDIS_FAIL_OPEN).",
            registry=registry,
        )


class Limiter:
    """Which buckets apply to a caller, and the admission check built from them."""

    def __init__(
        self,
        buckets: Buckets,
        metrics: LimitMetrics,
        *,
        default_rps: float | None = None,
        burst_factor: float = 2.0,
        slots: Slots | None = None,
    ) -> None:
        self.buckets = buckets
        self.in_flight = InFlight()
        self.slots: Slots = slots or self.in_flight
        self._default_rps = default_rps
        self._burst_factor = burst_factor
        self.refused = metrics.refused

    def burst(self, rps: float) -> float:
        return max(1.0, self._burst_factor * rps)

    def buckets_for(self, caller: Principal) -> list[Bucket]:
        found = []
        if key_rps := caller.rate_limit_rps:
            found.append(Bucket(f"key:{caller.key_id}", key_rps, self.burst(key_rps)))
        tenant_rps = caller.tenant_rate_limit_rps or self._default_rps
        if tenant_rps:
            tenant = caller.tenant_id or caller.tenant
            found.append(Bucket(f"tenant:{tenant}", tenant_rps, self.burst(tenant_rps)))
        return found

    async def check_rate(self, caller: Principal) -> dict[str, str]:
        """The rate-limit headers for this request, or 429 with `Retry-After`."""
        buckets = self.buckets_for(caller)
        if not buckets:
            return {}
        verdict = await self.buckets.take(buckets)
        if not verdict.allowed:
            self.refused.labels("rate").inc()
            raise RateLimited(
                f"rate limit exceeded; retry in {verdict.retry_after_s:.1f}s",
                retry_after_s=math.ceil(verdict.retry_after_s),
                headers=verdict.headers(),
            )
        return verdict.headers()

    @asynccontextmanager
    async def concurrency(self, caller: Principal) -> AsyncIterator[None]:
        """Hold one of the tenant's in-flight slots for the request, or 429 when none is free."""
        if not caller.max_concurrency:
            yield
            return
        tenant = caller.tenant_id or caller.tenant
        if not await self.slots.acquire(tenant, caller.max_concurrency):
            self.refused.labels("concurrency").inc()
            raise RateLimited(
                f"too many requests in flight for this tenant (limit {caller.max_concurrency})",
                retry_after_s=1,
            )
        try:
            yield
        finally:
            await self.slots.release(tenant)


def build_buckets(settings: Settings, metrics: LimitMetrics) -> MemoryBuckets | RedisBuckets:
    """Redis buckets when `MAAS_REDIS_URL` is set, else buckets in this process."""
    if settings.redis_url is None:
        return MemoryBuckets()
    client = aioredis.Redis.from_url(
        settings.redis_url.get_secret_value(), socket_timeout=0.5, socket_connect_timeout=0.5
    )
    return RedisBuckets(client, fail_open=settings.redis_fail_open, errors=metrics.backend_errors)
