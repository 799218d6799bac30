"""The one place that writes the `batch_jobs` table; routes and the batch runner are thin layers
over it. A tenant's job is looked up with its tenant id: another tenant's is simply not found."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.db import leases
from service.db.models import BatchJob, Tenant
from service.errors import Conflict, NotFound
from service.ids import new_id
from service.metering import Usage, insert_usage

FINISHED = frozenset({"completed", "failed", "cancelled"})
READ_CHUNK = 64 * 1024


def describe_batch(row: BatchJob) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "batch",
        "model": row.model,
        "input_file": row.input_file,
        "status": row.status,
        "counts": {"total": row.total, "completed": row.completed, "failed": row.failed},
        "error": row.error,
        **leases.job_times(row),
    }


class BatchStore:
    """Batch jobs in the database; their results files under `data_dir/batches/`."""

    def __init__(self, sessions: sessionmaker[Session], data_dir: Path) -> None:
        self.sessions = sessions
        self.data_dir = data_dir

    def results_path(self, job_id: str) -> Path:
        return self.data_dir / "batches" / f"{job_id}.jsonl"

    # -- API side -----------------------------------------------------------------------------

    def create(self, tenant_id: str, key_id: str | None, model: str, input_file: str, total: int) -> BatchJob:
        row = BatchJob(
            id=new_id("batch"),
            tenant_id=tenant_id,
            key_id=key_id,
            model=model,
            input_file=input_file,
            status="queued",
            cancel_requested=False,
            total=total,
            completed=0,
            failed=0,
            results_bytes=0,
            compute_us=0,
        )
        with self.sessions.begin() as session:
            session.add(row)
        return row

    def list(self, tenant_id: str) -> Sequence[BatchJob]:
        with self.sessions() as session:
            query = select(BatchJob).where(BatchJob.tenant_id == tenant_id)
            return session.scalars(query.order_by(BatchJob.created_at.desc(), BatchJob.id)).all()

    def get(self, tenant_id: str | None, job_id: str) -> BatchJob:
        """The job, for its tenant (None: any tenant, for the runner)."""
        with self.sessions() as session:
            row = session.get(BatchJob, job_id)
        if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
            raise NotFound(f"batch {job_id!r} not found")
        return row

    def cancel(self, tenant_id: str, job_id: str) -> BatchJob:
        """A queued job is cancelled at once; a running one is flagged and its runner stops after
        the inputs in flight, metering those it processed."""
        job = self.get(tenant_id, job_id)
        if job.status in FINISHED:
            raise Conflict(f"batch {job_id!r} has already {job.status}")
        with self.sessions.begin() as session:
            leases.cancel_queued(session, BatchJob, job_id)
        return self.get(tenant_id, job_id)

    def results(self, tenant_id: str, job_id: str) -> Iterator[bytes]:
        """The results file as far as the job's committed progress goes (lines a stopped runner
        wrote after it are redone by the next)."""
        job = self.get(tenant_id, job_id)
        path = self.results_path(job.id)
        left = job.results_bytes
        if left == 0 or not path.exists():
            return
        with path.open("rb") as results:
            while left > 0 and (chunk := results.read(min(READ_CHUNK, left))):
                left -= len(chunk)
                yield chunk

    # -- runner side --------------------------------------------------------------------------

    def claim(self, owner: str, lease_s: float) -> BatchJob | None:
        """The oldest queued job, or a running one whose lease expired (see `service.db.leases`)."""
        with self.sessions.begin() as session:
            claimed = leases.claim(session, BatchJob, owner, lease_s, (BatchJob.created_at, BatchJob.id))
        return None if claimed is None else self.get(None, claimed[0].id)

    def heartbeat(self, job_id: str, owner: str, lease_s: float, **progress: Any) -> str:
        """Extend the lease and record progress: `ok`, `cancelled` or `lost`."""
        with self.sessions.begin() as session:
            return leases.extend(session, BatchJob, job_id, owner, lease_s, **progress)

    def weight(self, tenant_id: str) -> float:
        """The tenant's weight: its share of the batch class among tenants' jobs."""
        with self.sessions() as session:
            tenant = session.get(Tenant, tenant_id)
        return tenant.weight if tenant is not None else 1.0

    def release(self, job_id: str, owner: str) -> None:
        with self.sessions.begin() as session:
            leases.release(session, BatchJob, job_id, owner)

    def finish(
        self, job_id: str, owner: str, status: str, *, usage: Usage | None = None, **values: Any
    ) -> bool:
        """End a job `owner` holds, with its usage event in the same transaction (a job ends once,
        so it is metered once); False when another replica holds it now."""
        with self.sessions.begin() as session:
            if not leases.end(session, BatchJob, job_id, owner, status, **values):
                return False
            if usage is not None:
                insert_usage(session, [usage])
        return True
