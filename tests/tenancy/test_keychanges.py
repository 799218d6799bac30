"""Key changes across replicas through a real Redis: a change published by one process drops the
key cache of another at once (its cache clock is frozen here, so nothing but the message can make
it forget); a listener whose connection is killed reconnects and hears the next change; a Redis
that cannot be reached never breaks publishing or key checks."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from service.tenancy.keychanges import KeyChangeMetrics, KeyChanges
from service.tenancy.keystore import DatabaseKeyStore
from service.tenancy.tenants import Tenants
from tests.conftest import redis_url_or_skip
from tests.e2e.conftest import free_port

pytestmark = pytest.mark.anyio
DELIVERY_DEADLINE_S = 0.5  # far under the cache's 1 s, and the clock below never moves anyway


def frozen() -> float:
    return 0.0  # cached answers never expire by time


@pytest.fixture
async def changes() -> AsyncIterator[tuple[KeyChanges, ...]]:
    """Two replicas' KeyChanges on one real Redis, on a channel of this test's own."""
    url = redis_url_or_skip()
    channel = f"maas:test:keys:{secrets.token_hex(4)}"
    pair = tuple(
        KeyChanges(url, channel=channel, metrics=KeyChangeMetrics(CollectorRegistry())) for _ in range(2)
    )
    assert len(pair) == 2
    yield pair
    for each in pair:
        await each.close()


def sample(changes: KeyChanges, name: str, **labels: str) -> float:
    """A metric of `changes` (0 when never set)."""
    assert changes.metrics is not None
    return changes.metrics.registry.get_sample_value(name, labels) or 0.0


async def refused_within(store: DatabaseKeyStore, key: str, deadline_s: float) -> float:
    """Seconds until `store` refuses `key` (fails past `deadline_s`)."""
    started = time.monotonic()
    while store.verify(key) is not None:
        assert time.monotonic() - started < deadline_s, "the change never reached this store"
        await asyncio.sleep(0.001)  # lets the listener run; a poll interval, not a timing assumption
    return time.monotonic() - started


@pytest.mark.redis
async def test_a_change_published_by_one_replica_drops_the_other_replicas_cache(
    sessions: sessionmaker[Session], changes: tuple[KeyChanges, ...]
) -> None:
    tenants = Tenants(sessions)
    tenants.create_tenant("acme")
    made = tenants.create_key("acme")
    here, there = (DatabaseKeyStore(sessions, clock=frozen) for _ in range(2))
    await changes[0].start(here.forget)
    await changes[1].start(there.forget)
    assert there.verify(made.key) is not None  # cached there, for good with this clock

    tenants.revoke_key(made.row.id)
    here.forget()
    changes[0].publish("key revoked")
    took = await refused_within(there, made.key, DELIVERY_DEADLINE_S)
    print(f"\nkey change delivered through Redis in {took * 1000:.1f} ms")

    # suspension too: the same path, a 403 instead of a 401
    other = tenants.create_key("acme")
    assert there.verify(other.key) is not None
    tenants.set_status("acme", "suspended")
    changes[0].publish("tenant suspended")
    deadline = time.monotonic() + DELIVERY_DEADLINE_S
    while True:
        try:
            there.verify(other.key)
        except Exception as refused:
            assert "suspended" in str(refused)
            break
        assert time.monotonic() < deadline, "the suspension never reached the other store"
        await asyncio.sleep(0.001)  # a poll interval
    # both announced by the first replica, both heard by the second (which drops its cache each time)
    assert sample(changes[0], "maas_key_changes_published_total", outcome="sent") == 2
    assert sample(changes[1], "maas_key_changes_received_total") == 2
    assert sample(changes[1], "maas_key_changes_subscribed") == 1


@pytest.mark.redis
async def test_a_listener_whose_connection_dies_reconnects_and_hears_the_next_change(
    sessions: sessionmaker[Session], changes: tuple[KeyChanges, ...]
) -> None:
    tenants = Tenants(sessions)
    tenants.create_tenant("acme")
    first, second = tenants.create_key("acme"), tenants.create_key("acme")
    there = DatabaseKeyStore(sessions, clock=frozen)
    publisher, listener = changes
    await listener.start(there.forget)
    assert there.verify(first.key) is not None and there.verify(second.key) is not None

    admin = redis.Redis.from_url(redis_url_or_skip())
    try:
        killed = [c["id"] for c in admin.client_list() if c.get("name") == listener.client_name]
        assert len(killed) == 1, killed
        tenants.revoke_key(first.row.id)  # made while the listener is cut off: no message reaches it
        admin.client_kill_filter(_id=killed[0])
        # reconnecting drops the cache (it may have missed changes), so the revocation holds...
        await refused_within(there, first.key, 5.0)
        # ...and once subscribed again it hears the next change
        deadline = time.monotonic() + 5.0
        while not listener.subscribed:
            assert time.monotonic() < deadline, "the listener never subscribed again"
            await asyncio.sleep(0.01)  # a poll interval
        assert there.verify(second.key) is not None  # cached again
        assert sample(listener, "maas_key_changes_reconnects_total") == 1
        assert sample(listener, "maas_key_changes_subscribed") == 1
        tenants.revoke_key(second.row.id)
        publisher.publish("key revoked")
        await refused_within(there, second.key, DELIVERY_DEADLINE_S)
    finally:
        admin.close()


async def test_an_unreachable_redis_breaks_neither_publishing_nor_key_checks(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    tenants = Tenants(sessions)
    tenants.create_tenant("acme")
    made = tenants.create_key("acme")
    store = DatabaseKeyStore(sessions)
    metrics = KeyChangeMetrics(CollectorRegistry())
    nowhere = KeyChanges(f"redis://127.0.0.1:{free_port()}/0", metrics=metrics)  # nothing listens there
    try:
        with caplog.at_level(logging.WARNING, logger="service.tenancy.keychanges"):
            started = time.monotonic()
            await nowhere.start(store.forget)  # gives up waiting for the subscription, quietly
            nowhere.publish("key revoked")  # logged, not raised
            assert time.monotonic() - started < 3.0
        assert store.verify(made.key) is not None
        tenants.revoke_key(made.row.id)
        store.forget()
        assert store.verify(made.key) is None
        messages = [r.getMessage() for r in caplog.records]
        assert any("could not publish a key change to Redis" in m for m in messages), messages
        assert any("key changes: lost Redis" in m for m in messages), messages
        assert sample(nowhere, "maas_key_changes_published_total", outcome="failed") == 1
        assert sample(nowhere, "maas_key_changes_subscribed") == 0
    finally:
        await nowhere.close()


def test_a_lookup_that_overlaps_a_change_is_not_cached(sessions: sessionmaker[Session]) -> None:
    tenants = Tenants(sessions)
    tenants.create_tenant("acme")
    made = tenants.create_key("acme")
    store: DatabaseKeyStore

    def now_while_a_change_lands() -> datetime:
        store.forget()  # a change published while this lookup is on its way to the database
        return datetime.now(UTC)

    store = DatabaseKeyStore(sessions, clock=frozen, now=now_while_a_change_lands)
    assert store.verify(made.key) is not None
    tenants.revoke_key(made.row.id)
    assert store.verify(made.key) is None  # the first answer was not kept past the change
