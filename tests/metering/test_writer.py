"""Group commit: concurrent events go to the database in a few transactions, each event's
future resolving only after its transaction commits; a row the database refuses fails its own
event only; an answer's inputs go on its tenant's monthly quota in its event's commit."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import IdempotencyRecord, UsageEvent
from service.metering import Idempotency, Outcome, UnitPrice, Usage, UsageWriter
from service.metering.idempotency import ClaimState
from service.tenancy.quota import Quota
from service.tenancy.tenants import Tenants

pytestmark = pytest.mark.anyio


def usage(request_id: str, *, inputs: int = 1, status: int = 200) -> Usage:
    return Usage(
        request_id=request_id,
        tenant_id="ten_a",
        key_id="key_a",
        model="vit",
        inputs=inputs,
        compute_us=1500,
        queue_us=10,
        status=status,
        price=UnitPrice(200, 1000),
        created_at=datetime.now(UTC),
    )


def count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(UsageEvent)) or 0)


async def test_many_concurrent_events_are_written_in_few_transactions(
    sessions: sessionmaker[Session],
) -> None:
    groups: list[int] = []
    writer = UsageWriter(sessions, flush_s=0, max_group=50, on_commit=lambda s: groups.append(s.events))
    writer.start()
    await asyncio.gather(*(writer.record(usage(f"req_{i}")) for i in range(200)))
    assert count(sessions) == 200  # every future resolved after its commit
    assert writer.transactions == 4 and groups == [50, 50, 50, 50]
    await writer.close()


async def test_the_flush_window_gathers_events_that_arrive_while_it_is_open(
    sessions: sessionmaker[Session],
) -> None:
    writer = UsageWriter(sessions, flush_s=10, max_group=3)  # a full group goes at once
    writer.start()
    await asyncio.gather(*(writer.record(usage(f"req_{i}")) for i in range(3)))
    assert writer.transactions == 1 and count(sessions) == 3
    await writer.close()


async def test_quota_counts_commit_with_their_events_one_upsert_per_group(
    sessions: sessionmaker[Session],
) -> None:
    tenant = Tenants(sessions).create_tenant("acme", monthly_quota_inputs=1000).id
    writer = UsageWriter(sessions, flush_s=10, max_group=40)  # the 40 events go as one group
    writer.start()
    counted = [
        writer.record(replace(usage(f"req_{i}", inputs=i % 3 + 1), tenant_id=tenant), quota=True)
        for i in range(30)
    ]
    uncounted = [writer.record(replace(usage(f"free_{i}", inputs=5), tenant_id=tenant)) for i in range(10)]
    await asyncio.gather(*counted, *uncounted)
    assert writer.transactions == 1 and count(sessions) == 40
    assert Quota(sessions).used(tenant) == sum(i % 3 + 1 for i in range(30))  # 60: the counted ones
    await writer.close()


async def test_a_refused_event_puts_nothing_on_the_quota_and_its_group_still_counts(
    sessions: sessionmaker[Session],
) -> None:
    tenant = Tenants(sessions).create_tenant("acme", monthly_quota_inputs=1000).id
    writer = UsageWriter(sessions, flush_s=10, max_group=5)
    writer.start()
    await writer.record(replace(usage("req_taken"), tenant_id=tenant))
    group = [usage("req_taken"), *(usage(f"req_{i}", inputs=2) for i in range(4))]  # one duplicate
    group = [replace(u, tenant_id=tenant) for u in group]
    results = await asyncio.gather(*(writer.record(u, quota=True) for u in group), return_exceptions=True)
    assert isinstance(results[0], Exception) and not any(isinstance(r, Exception) for r in results[1:])
    assert Quota(sessions).used(tenant) == 4 * 2  # the refused event put nothing on the quota
    await writer.close()


async def test_a_refused_event_fails_alone_and_the_rest_of_its_group_is_written(
    sessions: sessionmaker[Session],
) -> None:
    writer = UsageWriter(sessions, flush_s=10, max_group=20)  # the 20 events go as one group
    writer.start()
    await writer.record(usage("req_taken"))
    refused = {
        3: usage("req_taken"),  # a duplicate of an event already written
        11: replace(usage("req_11"), key_id="key_\ud800"),  # text no database driver can send
    }
    group = [refused.get(i, usage(f"req_{i}")) for i in range(20)]
    results = await asyncio.gather(*(writer.record(u) for u in group), return_exceptions=True)
    assert [i for i, r in enumerate(results) if isinstance(r, Exception)] == [3, 11]
    assert count(sessions) == 1 + 18
    assert writer.transactions < 1 + 18  # halved down to the refused rows, not one by one
    await writer.record(usage("req_next"))  # the writer goes on
    assert count(sessions) == 1 + 18 + 1
    await writer.close()


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_nul_byte_postgresql_refuses_fails_only_its_own_request(
    sessions: sessionmaker[Session],
) -> None:
    """PostgreSQL refuses text holding NUL (SQLite keeps it): the event and idempotency outcome of
    that one request fail, the others committed with it do not."""
    writer = UsageWriter(sessions, flush_s=10, max_group=4)
    writer.start()
    bad = Outcome("ten_a", "key\x00", "req_1", 200, b"{}")
    results = await asyncio.gather(
        writer.record(usage("req_0")),
        writer.record(usage("req_1"), bad),
        writer.record(replace(usage("req_2"), request_id="req_\x00")),
        writer.record(usage("req_3")),
        return_exceptions=True,
    )
    assert [isinstance(r, Exception) for r in results] == [False, True, True, False]
    with sessions() as session:
        written = set(session.scalars(select(UsageEvent.request_id)))
    assert written == {"req_0", "req_3"}
    await writer.close()


async def test_a_model_name_is_recorded_without_keys_or_text_the_database_refuses(
    sessions: sessionmaker[Session],
) -> None:
    writer = UsageWriter(sessions, flush_s=0)
    writer.start()
    await writer.record(replace(usage("req_1"), model="mk_PastedSecret0123\x00\ud800" + "x" * 200))
    await writer.close()
    with sessions() as session:
        model = session.scalars(select(UsageEvent.model)).one()
    assert model.startswith("mk_[redacted]\ufffd\ufffdxxx") and len(model) == 128
    assert "PastedSecret" not in model


async def test_close_writes_what_is_queued(sessions: sessionmaker[Session]) -> None:
    writer = UsageWriter(sessions, flush_s=10, max_group=1000)
    writer.start()
    pending = [asyncio.ensure_future(writer.record(usage(f"req_{i}"))) for i in range(5)]
    await asyncio.sleep(0)  # let them queue
    await writer.close()
    await asyncio.gather(*pending)
    assert count(sessions) == 5


async def test_an_idempotency_outcome_commits_with_its_event(sessions: sessionmaker[Session]) -> None:
    keys = Idempotency(sessions)
    assert keys.claim("ten_a", "k1", "h1", "req_1").state is ClaimState.NEW
    assert keys.claim("ten_a", "k1", "h1", "req_2").state is ClaimState.RUNNING
    assert keys.claim("ten_a", "k1", "other", "req_2").state is ClaimState.MISMATCH
    writer = UsageWriter(sessions, flush_s=0)
    writer.start()
    await writer.record(usage("req_1"), Outcome("ten_a", "k1", "req_1", 200, b'{"ok":1}'))
    replay = keys.claim("ten_a", "k1", "h1", "req_3")
    assert (replay.state, replay.request_id, replay.status, replay.body) == (
        ClaimState.REPLAY,
        "req_1",
        200,
        b'{"ok":1}',
    )
    assert keys.claim("ten_b", "k1", "h1", "req_4").state is ClaimState.NEW  # keys are per tenant
    await writer.record(usage("req_4", status=503), Outcome("ten_b", "k1", "req_4", 503, None, release=True))
    with sessions() as session:
        assert session.get(IdempotencyRecord, ("ten_b", "k1")) is None  # released: a retry runs
    await writer.close()


async def test_an_expired_key_runs_again(sessions: sessionmaker[Session]) -> None:
    clock = [datetime(2026, 11, 1, tzinfo=UTC)]
    keys = Idempotency(sessions, now=lambda: clock[0])
    assert keys.claim("ten_a", "k", "h", "req_1").state is ClaimState.NEW
    clock[0] = clock[0].replace(day=3)  # past both the 24 h TTL and the stale in-progress limit
    assert keys.claim("ten_a", "k", "h", "req_2").state is ClaimState.NEW
