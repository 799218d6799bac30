"""The job queue in the database: FIFO claims, one owner per job, and leases that expire so
another replica resumes a job whose replica died (SQLite and, when available, PostgreSQL)."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import FineTuneEvent, UsageEvent
from service.metering import TRAINING, UnitPrice, Usage
from service.tenancy.tenants import Tenants
from service.training.store import FineTuneStore, JobSpec, describe_job
from tests.training.test_datasets import LIMITS as DATASET_LIMITS
from tests.training.zips import colour_dataset

SPEC = JobSpec(
    "tiny-vit", "file_x", None, {"epochs": 1, "learning_rate": 0.001, "batch_size": 4}, "full", None
)


def test_jobs_are_claimed_oldest_first_by_one_owner_and_taken_over_when_the_lease_expires(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    store = FineTuneStore(sessions, tmp_path)
    tenant = Tenants(sessions).ensure_tenant("acme").id
    first = store.create_job(tenant, SPEC, None)
    second = store.create_job(tenant, SPEC, None)

    claimed = store.claim("replica-a", lease_s=60)
    assert claimed is not None and claimed.id == first.id and claimed.status == "running"
    other = store.claim("replica-b", lease_s=60)
    assert other is not None and other.id == second.id  # never the job replica-a holds
    assert store.claim("replica-c", lease_s=60) is None

    assert store.heartbeat(first.id, "replica-a", lease_s=-1) == "ok"  # its lease now lapses
    resumed = store.claim("replica-c", lease_s=60)
    assert resumed is not None and resumed.id == first.id and resumed.lease_owner == "replica-c"
    assert store.heartbeat(first.id, "replica-a", lease_s=60) == "lost"

    store.cancel(tenant, first.id)
    assert store.heartbeat(first.id, "replica-c", lease_s=60) == "cancelled"


def test_the_same_idempotency_key_gives_back_the_same_job(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    store = FineTuneStore(sessions, tmp_path)
    tenants = Tenants(sessions)
    acme, other = tenants.ensure_tenant("acme").id, tenants.ensure_tenant("other").id
    job = store.create_job(acme, SPEC, "retry-me")
    assert store.create_job(acme, SPEC, "retry-me").id == job.id
    assert store.create_job(other, SPEC, "retry-me").id != job.id  # keys are per tenant


def test_a_job_ends_once_with_one_usage_event_even_after_its_lease_was_taken_over(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    store = FineTuneStore(sessions, tmp_path)
    tenant = Tenants(sessions).ensure_tenant("acme").id
    job = store.create_job(tenant, SPEC, None, key_id="key_1")
    assert store.claim("replica-a", lease_s=60) is not None
    store.heartbeat(job.id, "replica-a", lease_s=-1)  # replica-a stalls; its lease lapses
    assert store.claim("replica-b", lease_s=60) is not None

    def usage(samples: int) -> Usage:
        return Usage(
            request_id=job.id,
            tenant_id=tenant,
            key_id="key_1",
            model="tiny-vit",
            inputs=samples,
            compute_us=2_000_000,
            queue_us=0,
            status=200,
            price=UnitPrice(100, 10_000),
            created_at=datetime.now(UTC),
            kind=TRAINING,
        )

    # the stalled replica wakes up and tries to end the job: nothing is written
    assert not store.finish(job.id, "replica-a", "succeeded", "job succeeded", usage=usage(99))
    assert store.finish(job.id, "replica-b", "succeeded", "job succeeded", usage=usage(48))
    assert not store.finish(job.id, "replica-b", "succeeded", "job succeeded", usage=usage(48))  # once

    with sessions() as session:
        events = session.scalars(select(UsageEvent)).all()
        statuses = session.scalars(
            select(FineTuneEvent.message).where(
                FineTuneEvent.job_id == job.id, FineTuneEvent.type == "status"
            )
        ).all()
    assert [(e.request_id, e.kind, e.inputs, e.key_id, e.amount_micro) for e in events] == [
        (job.id, "training", 48, "key_1", 48 * 100 + 20_000)
    ]
    assert statuses == ["job queued", "job running", "job succeeded"]
    assert store.get_job(tenant, job.id).status == "succeeded"


def test_the_queue_is_fifo_per_priority(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    store = FineTuneStore(sessions, tmp_path)
    tenant = Tenants(sessions).ensure_tenant("acme").id
    made = [
        store.create_job(tenant, replace(SPEC, priority=priority), None)
        for priority in ("low", "normal", "high", "normal", "high")
    ]
    low, normal, high, normal_later, high_later = (job.id for job in made)

    claims = [store.claim(f"replica-{i}", lease_s=60) for i in range(6)]
    assert [job.id if job else None for job in claims] == [
        high,
        high_later,
        normal,
        normal_later,
        low,
        None,
    ]
    assert describe_job(store.get_job(tenant, low))["priority"] == "low"


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_a_dataset_whose_row_the_database_refuses_leaves_no_file_behind(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """PostgreSQL refuses a file of a tenant that is gone (SQLite does not check foreign keys):
    the zip, already written, goes too."""
    store = FineTuneStore(sessions, tmp_path)
    with pytest.raises(IntegrityError):
        store.create_file(
            "ten_gone", "colours.zip", io.BytesIO(colour_dataset()), "fine-tune", DATASET_LIMITS
        )
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
