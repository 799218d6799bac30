"""Group commit: concurrent events go to the database in a few transactions, each event's
future resolving only after its transaction commits; a failed group fails all of its events."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import IdempotencyRecord, UsageEvent
from service.metering import Idempotency, Outcome, UnitPrice, Usage, UsageWriter
from service.metering.idempotency import ClaimState

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


async def test_a_failed_group_fails_every_event_in_it_and_writes_none(
    sessions: sessionmaker[Session],
) -> None:
    writer = UsageWriter(sessions, flush_s=0)
    writer.start()
    results = await asyncio.gather(
        writer.record(usage("req_same")), writer.record(usage("req_same")), return_exceptions=True
    )
    assert all(isinstance(r, Exception) for r in results)
    assert count(sessions) == 0
    await writer.record(usage("req_next"))  # the writer goes on
    assert count(sessions) == 1
    await writer.close()


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
