"""The one place that writes the `files`, `fine_tune_jobs` and `fine_tune_events` tables.

Routes (files, fine-tunes) and the job runner are thin layers over it. Everything a tenant
asks for is looked up with its tenant id: another tenant's file or job is simply not found.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.batches.inputs import check_batch_file
from service.bounds import text_problem
from service.db import leases
from service.db.models import BatchJob, DatasetFile, FineTuneEvent, FineTuneJob, iso
from service.errors import Conflict, InvalidInput, NotFound
from service.ids import new_id
from service.metering import Usage, insert_usage
from service.training.dataset_files import check_file, with_examples
from service.training.datasets import DatasetLimits

FINISHED = frozenset({"succeeded", "failed", "cancelled"})
FINE_TUNE_PURPOSE, BATCH_PURPOSE = "fine-tune", "batch"  # what an uploaded file is for
# the queue is FIFO per priority; higher numbers are claimed first
PRIORITIES = {"high": 1, "normal": 0, "low": -1}
PRIORITY_NAMES = {number: name for name, number in PRIORITIES.items()}


def describe_file(row: DatasetFile) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "filename": row.filename,
        "bytes": row.bytes,
        "purpose": row.purpose,
        "status": row.status,
        "summary": with_examples(row.summary) if row.purpose == FINE_TUNE_PURPOSE else row.summary,
        "created_at": iso(row.created_at),
    }


def describe_job(row: FineTuneJob) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "fine_tuning.job",
        "base_model": row.base_model,
        "method": row.method,
        "training_file": row.training_file,
        "validation_file": row.validation_file,
        "hyperparameters": row.hyperparameters,
        "suffix": row.suffix,
        "priority": PRIORITY_NAMES.get(row.priority, str(row.priority)),
        "status": row.status,
        "progress": {
            "steps_done": row.steps_done,
            "steps_total": row.steps_total,
            "epochs_done": row.epochs_done,
            "epochs_total": row.hyperparameters.get("epochs"),
        },
        "metrics": row.metrics,
        "fine_tuned_model": row.fine_tuned_model,
        "error": row.error,
        "usage": {"device_seconds": round(row.device_seconds, 3), "trained_samples": row.trained_samples},
        **leases.job_times(row),
    }


def describe_event(row: FineTuneEvent) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "fine_tuning.job.event",
        "level": row.level,
        "type": row.type,
        "message": row.message,
        "data": row.data,
        "created_at": iso(row.created_at),
    }


@dataclass(frozen=True)
class JobSpec:
    base_model: str
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    method: str
    suffix: str | None
    priority: str = "normal"  # a key of PRIORITIES


class FineTuneStore:
    """Files and jobs in the database; dataset files under `data_dir/files/<tenant>/`."""

    def __init__(self, sessions: sessionmaker[Session], data_dir: Path) -> None:
        self.sessions = sessions
        self.data_dir = data_dir

    # -- files --------------------------------------------------------------------------------

    def create_file(
        self, tenant_id: str, filename: str, upload: BinaryIO, purpose: str, limits: DatasetLimits
    ) -> DatasetFile:
        """Check the name and the file in `upload` for its purpose (a dataset to fine-tune on: a
        zip, JSONL or CSV; or a batch job's inputs; 422 on any problem, and nothing is kept), keep
        it, and record it. A file whose row cannot be written is not kept."""
        problem = text_problem(filename)
        if problem is not None:
            raise InvalidInput(f"the file's name {problem}")
        if purpose == BATCH_PURPOSE:
            summary = check_batch_file(upload, limits).summary()
            suffix = f".{summary['format']}"
        else:
            dataset, suffix = check_file(upload, filename, limits)
            summary = dataset.summary()
        file_id = new_id("file")
        relative = Path("files") / tenant_id / f"{file_id}{suffix}"
        path = self.data_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        upload.seek(0)
        with partial.open("wb") as kept:
            shutil.copyfileobj(upload, kept)
            size = kept.tell()
        partial.replace(path)
        row = DatasetFile(
            id=file_id,
            tenant_id=tenant_id,
            filename=filename[:255],
            bytes=size,
            purpose=purpose,
            status="processed",
            summary=summary,
            path=str(relative),
        )
        try:
            with self.sessions.begin() as session:
                session.add(row)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return row

    def list_files(self, tenant_id: str) -> Sequence[DatasetFile]:
        with self.sessions() as session:
            query = select(DatasetFile).where(DatasetFile.tenant_id == tenant_id)
            return session.scalars(query.order_by(DatasetFile.created_at)).all()

    def get_file(self, tenant_id: str, file_id: str) -> DatasetFile:
        with self.sessions() as session:
            row = session.get(DatasetFile, file_id)
        if row is None or row.tenant_id != tenant_id:
            raise NotFound(f"file {file_id!r} not found")
        return row

    def delete_file(self, tenant_id: str, file_id: str) -> DatasetFile:
        row = self.get_file(tenant_id, file_id)
        with self.sessions.begin() as session:
            active = session.scalars(
                select(FineTuneJob.id)
                .where(FineTuneJob.status.in_(["queued", "running"]))
                .where(or_(FineTuneJob.training_file == file_id, FineTuneJob.validation_file == file_id))
            ).first()
            active = (
                active
                or session.scalars(
                    select(BatchJob.id)
                    .where(BatchJob.status.in_(["queued", "running"]))
                    .where(BatchJob.input_file == file_id)
                ).first()
            )
            if active is not None:
                raise Conflict(f"file {file_id!r} is used by job {active!r}, which has not finished")
            session.execute(delete(DatasetFile).where(DatasetFile.id == file_id))
        (self.data_dir / row.path).unlink(missing_ok=True)
        return row

    def file_path(self, row: DatasetFile) -> Path:
        return self.data_dir / row.path

    # -- jobs (API side) ----------------------------------------------------------------------

    def create_job(
        self, tenant_id: str, spec: JobSpec, idempotency_key: str | None, *, key_id: str | None = None
    ) -> FineTuneJob:
        """A queued job; the same Idempotency-Key from the same tenant gives back the first job.
        `key_id`: the key that asked for it, whose usage the training will be."""
        if idempotency_key is not None:
            existing = self._by_idempotency_key(tenant_id, idempotency_key)
            if existing is not None:
                return existing
        row = FineTuneJob(
            id=new_id("ftjob"),
            tenant_id=tenant_id,
            base_model=spec.base_model,
            method=spec.method,
            training_file=spec.training_file,
            validation_file=spec.validation_file,
            hyperparameters=spec.hyperparameters,
            suffix=spec.suffix,
            idempotency_key=idempotency_key,
            key_id=key_id,
            priority=PRIORITIES[spec.priority],
            status="queued",
            cancel_requested=False,
            steps_done=0,
            epochs_done=0,
            device_seconds=0.0,
            trained_samples=0,
        )
        try:
            with self.sessions.begin() as session:
                session.add(row)
                session.flush()  # the job row first: the event refers to it
                session.add(_event(row.id, "status", "job queued", {"status": "queued"}))
        except IntegrityError:
            # a concurrent request with the same key won the race: answer its job
            existing = self._by_idempotency_key(tenant_id, idempotency_key or "")
            if existing is None:
                raise
            return existing
        return row

    def _by_idempotency_key(self, tenant_id: str, key: str) -> FineTuneJob | None:
        with self.sessions() as session:
            return session.scalars(
                select(FineTuneJob)
                .where(FineTuneJob.tenant_id == tenant_id)
                .where(FineTuneJob.idempotency_key == key)
            ).first()

    def list_jobs(self, tenant_id: str) -> Sequence[FineTuneJob]:
        with self.sessions() as session:
            query = select(FineTuneJob).where(FineTuneJob.tenant_id == tenant_id)
            return session.scalars(query.order_by(FineTuneJob.created_at.desc())).all()

    def get_job(self, tenant_id: str | None, job_id: str) -> FineTuneJob:
        """The job, for its tenant (None: any tenant, for the runner)."""
        with self.sessions() as session:
            row = session.get(FineTuneJob, job_id)
        if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
            raise NotFound(f"fine-tuning job {job_id!r} not found")
        return row

    def events(self, tenant_id: str, job_id: str) -> Sequence[FineTuneEvent]:
        self.get_job(tenant_id, job_id)
        with self.sessions() as session:
            query = select(FineTuneEvent).where(FineTuneEvent.job_id == job_id)
            return session.scalars(query.order_by(FineTuneEvent.id)).all()

    def cancel(self, tenant_id: str, job_id: str) -> FineTuneJob:
        """A queued job is cancelled at once; a running one is flagged, and its trainer stops at its
        next step (the runner learns of the flag directly, or from the database on its heartbeat)."""
        job = self.get_job(tenant_id, job_id)
        if job.status in FINISHED:
            raise Conflict(f"fine-tuning job {job_id!r} has already {job.status}")
        with self.sessions.begin() as session:
            if leases.cancel_queued(session, FineTuneJob, job_id):
                session.add(_event(job_id, "status", "job cancelled", {"status": "cancelled"}))
            else:
                session.add(_event(job_id, "message", "cancel requested"))
        return self.get_job(tenant_id, job_id)

    # -- jobs (runner side) -------------------------------------------------------------------

    def claim(self, owner: str, lease_s: float) -> FineTuneJob | None:
        """Take the oldest queued job of the highest priority, or a running one whose lease expired
        (its replica died; it keeps its place by priority and age): see `service.db.leases`."""
        order = (FineTuneJob.priority.desc(), FineTuneJob.created_at, FineTuneJob.id)
        with self.sessions.begin() as session:
            claimed = leases.claim(session, FineTuneJob, owner, lease_s, order)
            if claimed is None:
                return None
            job, resumed = claimed
            if not resumed:
                session.add(_event(job.id, "status", "job running", {"status": "running"}))
        return self.get_job(None, job.id)

    def heartbeat(self, job_id: str, owner: str, lease_s: float, **progress: Any) -> str:
        """Extend the lease and record progress. Answers `ok`, `cancelled` (a cancel was requested)
        or `lost` (the lease expired and another replica took the job): the trainer stops on either."""
        with self.sessions.begin() as session:
            return leases.extend(session, FineTuneJob, job_id, owner, lease_s, **progress)

    def release(self, job_id: str, owner: str) -> None:
        """Give a running job up (this replica stops): any replica may resume it at once."""
        with self.sessions.begin() as session:
            leases.release(session, FineTuneJob, job_id, owner)
            session.add(_event(job_id, "message", "runner stopped; the job resumes from its checkpoint"))

    def finish(
        self, job_id: str, owner: str, status: str, message: str, *, usage: Usage | None = None, **values: Any
    ) -> bool:
        """End a running job that `owner` holds, and write its usage event in the same transaction:
        a job ends once, so its training is metered once. False (and nothing written) when the
        job is no longer `owner`'s: its lease was lost to another replica, which finishes it."""
        level = "error" if status == "failed" else "info"
        with self.sessions.begin() as session:
            if not leases.end(session, FineTuneJob, job_id, owner, status, **values):
                return False
            session.add(_event(job_id, "status", message, {"status": status}, level=level))
            if usage is not None:
                insert_usage(session, [usage])
        return True

    def add_event(
        self, job_id: str, kind: str, message: str, data: dict[str, Any] | None = None, level: str = "info"
    ) -> None:
        with self.sessions.begin() as session:
            session.add(_event(job_id, kind, message, data, level=level))

    def succeeded(self, *, tenant_id: str | None = None, model: str | None = None) -> Sequence[FineTuneJob]:
        """Every job that produced a model (registered again at start-up), or only the tenant's, or
        only the one that produced `model` (replicas find models finished by others). In the order
        they finished, so a model trained from a fine-tuned one comes after its base."""
        with self.sessions() as session:
            query = select(FineTuneJob).where(FineTuneJob.status == "succeeded")
            if tenant_id is not None:
                query = query.where(FineTuneJob.tenant_id == tenant_id)
            if model is not None:
                query = query.where(FineTuneJob.fine_tuned_model == model)
            query = query.where(FineTuneJob.fine_tuned_model.is_not(None))
            return session.scalars(query.order_by(FineTuneJob.finished_at, FineTuneJob.id)).all()


def _event(
    job_id: str, kind: str, message: str, data: dict[str, Any] | None = None, *, level: str = "info"
) -> FineTuneEvent:
    return FineTuneEvent(job_id=job_id, level=level, type=kind, message=message[:2000], data=data)
