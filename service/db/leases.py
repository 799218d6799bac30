"""Jobs that replicas take turns on through a lease in their row (fine-tuning and batch jobs).

A job row has `status` (queued, running, then a finished one), `lease_owner`, `lease_expires_at`,
`cancel_requested` and `started_at`. A replica claims a queued job, or a running one whose lease
expired (its replica died), extends the lease while it works, and ends the job only while it
still holds it, so a job ends once whatever takeovers came before. Each function works in the
caller's transaction, so a store can add its own rows (events, usage) to it. `ClaimLoop` is
the loop both runners share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session

from service.db.models import iso

log = logging.getLogger(__name__)
IDLE_POLL_S = 2.0  # how often an idle runner looks for jobs queued by other replicas
HEARTBEAT_S = 1.0  # a running job's lease is renewed at least this often (and 3 times a lease)
Job = TypeVar("Job")


def heartbeat_every(lease_s: float) -> float:
    """How often a runner renews a lease of `lease_s`: every second, or three times a lease where
    that is shorter, so that one slow commit does not lose it."""
    return min(HEARTBEAT_S, lease_s / 3)


def claim(
    session: Session, table: Any, owner: str, lease_s: float, order_by: Sequence[Any]
) -> tuple[Any, bool] | None:
    """The first job by `order_by` that is queued or whose lease expired, now `owner`'s, and
    whether it was running already (a takeover); None when there is none.

    On PostgreSQL the candidate row is locked with FOR UPDATE SKIP LOCKED, so replicas claiming
    at once get different jobs; the conditional UPDATE makes it safe on SQLite too."""
    now = datetime.now(UTC)
    claimable = or_(
        table.status == "queued",
        (table.status == "running") & or_(table.lease_expires_at.is_(None), table.lease_expires_at < now),
    )
    job = session.scalars(
        select(table).where(claimable).order_by(*order_by).limit(1).with_for_update(skip_locked=True)
    ).first()
    if job is None:
        return None
    resumed = job.status == "running"
    taken = rowcount(
        session.execute(
            update(table)
            .where(table.id == job.id, claimable)
            .values(
                status="running",
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_s),
                started_at=job.started_at or now,
            )
        )
    )
    return (job, resumed) if taken else None


def extend(session: Session, table: Any, job_id: str, owner: str, lease_s: float, **progress: Any) -> str:
    """Extend `owner`'s lease and record progress: `ok`, `cancelled` (a cancel was requested) or
    `lost` (the lease expired and another replica took the job)."""
    session.execute(
        update(table)
        .where(table.id == job_id, table.lease_owner == owner)
        .values(lease_expires_at=datetime.now(UTC) + timedelta(seconds=lease_s), **progress)
    )
    job = session.get(table, job_id, populate_existing=True)
    if job is None or job.lease_owner != owner:
        return "lost"
    return "cancelled" if job.cancel_requested else "ok"


def release(session: Session, table: Any, job_id: str, owner: str) -> None:
    """Give a running job up (this replica stops): any replica may resume it at once."""
    session.execute(
        update(table)
        .where(table.id == job_id, table.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None)
    )


def end(session: Session, table: Any, job_id: str, owner: str, status: str, **values: Any) -> bool:
    """Give a running job that `owner` holds its final `status`; False when it is no longer
    `owner`'s (its lease was lost to another replica, which ends it)."""
    ended = session.execute(
        update(table)
        .where(table.id == job_id, table.lease_owner == owner, table.status == "running")
        .values(
            status=status, lease_owner=None, lease_expires_at=None, finished_at=datetime.now(UTC), **values
        )
    )
    return rowcount(ended) > 0


def cancel_queued(session: Session, table: Any, job_id: str) -> bool:
    """Cancel a queued job at once (True), else flag a running one, whose runner stops (False)."""
    cancelled = session.execute(
        update(table)
        .where(table.id == job_id, table.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=datetime.now(UTC))
    )
    if rowcount(cancelled):
        return True
    session.execute(update(table).where(table.id == job_id).values(cancel_requested=True))
    return False


def job_times(job: Any) -> dict[str, str | None]:
    """A leased job's `created_at`, `started_at` and `finished_at` as the API shows them."""
    return {
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }


def rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


class ClaimLoop(Generic[Job]):
    """The loop of a job runner: claim a job (on a worker thread), run it, claim the next; when
    there is none, wait for `notify` (a job queued here) or `IDLE_POLL_S` (one queued by another
    replica). Subclasses say how to claim (`_claim`) and run (`_run`) a job. `owner` names this
    runner in the leases it holds: unique across replicas and restarts."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._loop(), name=self._name)

    def notify(self) -> None:
        """A job was queued here: look at once instead of at the next poll. Safe from any thread
        (the routes that queue jobs run on worker threads)."""
        if self._event_loop is not None:
            self._event_loop.call_soon_threadsafe(self._wake.set)

    async def _ended(self) -> None:
        """Wait until the loop has ended (after `_stopping` was set)."""
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def _claim(self) -> Job | None:
        raise NotImplementedError

    async def _run(self, job: Job) -> None:
        raise NotImplementedError

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                job = await asyncio.to_thread(self._claim)
            except Exception:
                log.exception("%s: claiming a job failed", self._name)
                job = None
            if job is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_POLL_S):
                        await self._wake.wait()
                continue
            await self._run(job)
