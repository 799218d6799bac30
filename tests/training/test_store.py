"""The job queue in the database: FIFO claims, one owner per job, and leases that expire so
another replica resumes a job whose replica died (SQLite and, when available, PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from service.tenants import Tenants
from service.training.store import FineTuneStore, JobSpec

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
