"""Token buckets (in-process and in shared memory with an injected clock, and in a real Redis), the
in-flight cap, and what happens when Redis is unreachable."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter

from service.errors import LimiterUnavailable, RateLimited
from service.tenancy.principal import Principal
from service.tenancy.ratelimit import (
    Bucket,
    InFlight,
    Limiter,
    LimitMetrics,
    MemoryBuckets,
    RedisBuckets,
    decide,
)
from service.tenancy.shared_limits import SharedBuckets
from tests.conftest import redis_url_or_skip

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


TakeNow = MemoryBuckets | SharedBuckets


@pytest.fixture(params=["memory", "shared"])
def make_buckets(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Clock], TakeNow]:
    """One process's buckets, or the buckets several workers share (service/tenancy/shared_limits.py):
    the same answers either way."""
    if request.param == "memory":
        return MemoryBuckets
    return lambda clock: SharedBuckets(tmp_path / "rate-limits", sets=4, clock=clock)


def test_a_bucket_allows_its_burst_then_refills_at_its_rate(make_buckets: Callable[[Clock], TakeNow]) -> None:
    clock = Clock()
    buckets = make_buckets(clock)
    bucket = [Bucket("key:a", rate=2, burst=4)]
    verdicts = [buckets.take_now(bucket) for _ in range(5)]
    assert [v.allowed for v in verdicts] == [True, True, True, True, False]
    assert [v.remaining for v in verdicts] == [3, 2, 1, 0, 0]
    refused = verdicts[-1]
    assert refused.retry_after_s == pytest.approx(0.5) and refused.limit == 4
    assert refused.reset_s == pytest.approx(2.0)  # 4 tokens at 2 a second
    clock.now += 0.5
    assert buckets.take_now(bucket).allowed
    assert not buckets.take_now(bucket).allowed
    clock.now += 100
    assert buckets.take_now(bucket).remaining == 3  # refilled to the burst, not beyond


def test_a_request_is_charged_to_every_bucket_or_to_none(make_buckets: Callable[[Clock], TakeNow]) -> None:
    clock = Clock()
    buckets = make_buckets(clock)
    key = Bucket("key:a", rate=1, burst=1)
    tenant = Bucket("tenant:t", rate=10, burst=10)
    assert buckets.take_now([key, tenant]).allowed
    refused = buckets.take_now([key, tenant])
    assert not refused.allowed and refused.limit == 1  # described by the tightest bucket
    # the refusal cost the tenant's bucket nothing: a second key of the tenant still has 9
    assert buckets.take_now([Bucket("key:b", 1, 1), tenant]).remaining == 0
    assert buckets.take_now([tenant]).remaining == 7


def test_decide_reports_the_tightest_bucket() -> None:
    verdict, after = decide([Bucket("a", 1, 10), Bucket("b", 1, 2)], [10.0, 2.0])
    assert verdict.allowed and after == [9.0, 1.0] and (verdict.limit, verdict.remaining) == (2, 1)
    assert verdict.headers() == {"RateLimit-Limit": "2", "RateLimit-Remaining": "1", "RateLimit-Reset": "1"}


def _limiter(buckets: MemoryBuckets, **kwargs: float) -> Limiter:
    return Limiter(buckets, LimitMetrics(CollectorRegistry()), **kwargs)


async def test_the_limiter_picks_key_tenant_and_default_buckets() -> None:
    limiter = _limiter(MemoryBuckets(Clock()), default_rps=3, burst_factor=2)
    plain = Principal("key_1", "acme", frozenset(), tenant_id="ten_1")
    assert limiter.buckets_for(plain) == [Bucket("tenant:ten_1", 3, 6)]
    own = Principal(
        "key_1", "acme", frozenset(), tenant_id="ten_1", rate_limit_rps=0.2, tenant_rate_limit_rps=5
    )
    assert limiter.buckets_for(own) == [Bucket("key:key_1", 0.2, 1), Bucket("tenant:ten_1", 5, 10)]
    assert _limiter(MemoryBuckets()).buckets_for(plain) == []  # no default: no limit
    assert await _limiter(MemoryBuckets()).check_rate(plain) == {}


async def test_the_limiter_raises_429_with_retry_after_and_headers() -> None:
    limiter = _limiter(MemoryBuckets(Clock()))
    caller = Principal("key_1", "acme", frozenset(), tenant_id="ten_1", rate_limit_rps=0.5)
    assert (await limiter.check_rate(caller))["RateLimit-Remaining"] == "0"
    with pytest.raises(RateLimited) as caught:
        await limiter.check_rate(caller)
    assert caught.value.headers["Retry-After"] == "2"  # one token at 0.5 a second
    assert caught.value.headers["RateLimit-Limit"] == "1"


async def test_the_in_flight_cap_holds_and_releases() -> None:
    limiter = _limiter(MemoryBuckets())
    caller = Principal("key_1", "acme", frozenset(), tenant_id="ten_1", max_concurrency=2)
    async with limiter.concurrency(caller), limiter.concurrency(caller):
        assert limiter.in_flight.count("ten_1") == 2
        with pytest.raises(RateLimited, match="in flight"):
            async with limiter.concurrency(caller):
                pass
    assert limiter.in_flight.count("ten_1") == 0
    flights = InFlight()
    assert flights.enter("t", 1) and not flights.enter("t", 1)


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url_or_skip())
    yield client
    await client.aclose()


def _errors() -> Counter:
    return Counter("errors", "", registry=CollectorRegistry())


@pytest.mark.redis
async def test_redis_buckets_are_shared_by_every_limiter_on_the_same_redis(
    redis_client: aioredis.Redis,
) -> None:
    prefix = f"maas:test:{secrets.token_hex(6)}:"
    url = redis_url_or_skip()
    first = RedisBuckets(redis_client, fail_open=True, errors=_errors(), prefix=prefix)
    second_client = aioredis.Redis.from_url(url)
    second = RedisBuckets(second_client, fail_open=True, errors=_errors(), prefix=prefix)
    bucket = [Bucket("tenant:t", rate=0.01, burst=3)]  # refills too slowly to matter here
    verdicts = [await (first if i % 2 else second).take(bucket) for i in range(5)]
    assert [v.allowed for v in verdicts] == [True, True, True, False, False]
    assert verdicts[-1].retry_after_s > 50
    assert await redis_client.pttl(prefix + "tenant:t") > 0  # idle buckets expire
    await second_client.aclose()


@pytest.mark.parametrize("fail_open", [True, False])
async def test_an_unreachable_redis_fails_open_or_closed_as_set(fail_open: bool) -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    errors = _errors()
    buckets = RedisBuckets(client, fail_open=fail_open, errors=errors)
    if fail_open:
        verdict = await buckets.take([Bucket("tenant:t", 1, 1)])
        assert verdict.allowed and verdict.headers() == {}
    else:
        with pytest.raises(LimiterUnavailable):
            await buckets.take([Bucket("tenant:t", 1, 1)])
    assert errors._value.get() == 1
    await buckets.close()
