"""Group commit: usage events (and the idempotency outcomes that go with them) written in batches.

Each request hands its event to the one writer task of the process and awaits a future. The
writer takes what has arrived (after an optional short window, `MAAS_USAGE_FLUSH_MS`, unless the
group is full already) and writes it in ONE transaction on its own thread; the events that
arrive meanwhile form the next group, so under load groups grow with no added wait. A request's
answer is sent only after its future resolves, i.e. after the commit: a crash can lose an event
only for a request that got no answer. A row the database refuses fails its own request only:
the rest of its group is written (see `_write_isolating`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from service.bounds import storable
from service.db.models import Base, IdempotencyRecord, UsageEvent
from service.metering.prices import INFERENCE, UnitPrice
from service.redaction import redact
from service.tenancy.quota import add_to_quota, month_of

log = logging.getLogger(__name__)
_EVENTS = Base.metadata.tables[UsageEvent.__tablename__]


MODEL_CHARS = 128  # the usage_events.model column


def recorded_name(model: str) -> str:
    """A model's name as a usage event keeps it: whatever a client put in the URL, with anything
    shaped like a key redacted and what the database refuses replaced, cut to the column."""
    return storable(redact(model))[:MODEL_CHARS]


@dataclass(frozen=True)
class Usage:
    """One answered request (or, `kind` training, one fine-tuning job), as it will be billed.
    Its `model` is kept as `recorded_name` makes it, however the event was built."""

    request_id: str
    tenant_id: str
    key_id: str
    model: str
    inputs: int
    compute_us: int
    queue_us: int
    status: int
    price: UnitPrice
    created_at: datetime
    kind: str = INFERENCE

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", recorded_name(self.model))  # frozen: set once, here

    @property
    def amount_micro(self) -> int:
        """Only a 200 is charged; a failure is recorded with its status and costs nothing."""
        return self.price.amount(self.inputs, self.compute_us) if self.status == 200 else 0

    def row(self) -> dict[str, object]:
        return {
            "request_id": self.request_id,
            "kind": self.kind,
            "tenant_id": self.tenant_id,
            "key_id": self.key_id,
            "model": self.model,
            "inputs": self.inputs,
            "compute_us": self.compute_us,
            "queue_us": self.queue_us,
            "status": self.status,
            "per_input_micro": self.price.per_input_micro,
            "per_compute_second_micro": self.price.per_compute_second_micro,
            "amount_micro": self.amount_micro,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Outcome:
    """How an idempotent request ended: its answer to replay (`body`), or `release` the key so
    that a retry runs again (server errors, client gone)."""

    tenant_id: str
    key: str
    request_id: str
    status: int
    body: bytes | None
    release: bool = False


@dataclass
class _Pending:
    usage: Usage | None
    outcome: Outcome | None
    future: asyncio.Future[None]
    quota: bool = False  # the usage's inputs count against its tenant's monthly quota too


@dataclass
class GroupStats:
    events: int
    seconds: float


@dataclass
class UsageWriter:
    """The process's one usage writer; `record` returns once the event is committed."""

    sessions: sessionmaker[Session]
    flush_s: float = 0.0
    max_group: int = 256
    on_commit: Callable[[GroupStats], None] | None = None
    _pending: list[_Pending] = field(default_factory=list)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _full: asyncio.Event = field(default_factory=asyncio.Event)
    _executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="maas-usage")
    )
    _task: asyncio.Task[None] | None = None
    _closing: bool = False
    transactions: int = 0  # groups committed (tests read it)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="maas-usage-writer")

    async def record(
        self, usage: Usage | None, outcome: Outcome | None = None, *, quota: bool = False
    ) -> None:
        """Queue `usage` (and `outcome`) for the next group; return after its commit, or raise
        what the commit raised. With `quota`, its inputs are added to its tenant's monthly quota
        count in the same transaction (service/tenancy/quota.py)."""
        if self._closing:
            raise RuntimeError("usage writer is closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(usage, outcome, future, quota))
        if len(self._pending) >= self.max_group:
            self._full.set()
        self._wakeup.set()
        # shielded: a request cancelled now still gets its event written by the group
        await asyncio.shield(future)

    async def close(self) -> None:
        """Write what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        self._full.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.flush_s > 0 and len(self._pending) < self.max_group and not self._closing:
                # a short window for the group to fill; a full group goes at once
                self._full.clear()
                try:
                    async with asyncio.timeout(self.flush_s):
                        await self._full.wait()
                except TimeoutError:
                    pass
            group, self._pending = self._pending[: self.max_group], self._pending[self.max_group :]
            started = time.perf_counter()
            failed = await loop.run_in_executor(self._executor, self._write_isolating, group)
            if len(failed) < len(group) and self.on_commit is not None:
                written = sum(1 for i in group if i.usage and id(i) not in failed)
                self.on_commit(GroupStats(written, time.perf_counter() - started))
            for item in group:
                if item.future.done():
                    continue
                if id(item) in failed:
                    item.future.set_exception(failed[id(item)])
                else:
                    item.future.set_result(None)

    def _write_isolating(self, group: list[_Pending]) -> dict[int, Exception]:
        """Write `group` in one transaction. If the database refuses one of its rows, write each
        half on its own, and so on down: the others are written, a refused event fails alone
        (one tenant's bad request never fails another's). If the database itself fails, the
        whole group does. Returns the failed items (by `id`) with their errors."""
        try:
            self._write(group)
        except Exception as exc:
            if len(group) == 1 or not _refused_a_row(exc):
                log.error("usage: %d event(s) could not be written: %s", len(group), exc)
                return {id(item): exc for item in group}
        else:
            self.transactions += 1
            return {}
        half = len(group) // 2
        return {**self._write_isolating(group[:half]), **self._write_isolating(group[half:])}

    def _write(self, group: list[_Pending]) -> None:
        """One transaction for the whole group."""
        with self.sessions.begin() as session:
            insert_usage(session, [item.usage for item in group if item.usage is not None])
            for item in group:
                if item.outcome is not None:
                    _settle(session, item.outcome)
            counts: Counter[tuple[str, str]] = Counter()  # one row per tenant and month
            for item in group:
                if item.quota and item.usage is not None:
                    counts[item.usage.tenant_id, month_of(item.usage.created_at)] += item.usage.inputs
            add_to_quota(session, counts)


def _refused_a_row(exc: Exception) -> bool:
    """Whether the database refused what a row holds (a value it cannot store, a duplicate),
    rather than failing as a whole (connection lost, server down)."""
    if isinstance(exc, DBAPIError):
        return isinstance(exc, DataError | IntegrityError)
    return isinstance(exc, StatementError | ValueError)  # a value the driver could not send


def insert_usage(session: Session, usages: list[Usage]) -> None:
    """Add `usages` to `session`'s transaction (the writer's group, or a job's final update)."""
    if usages:  # a Core executemany: no ORM unit of work on the hot path
        session.connection().execute(insert(_EVENTS), [usage.row() for usage in usages])


def _settle(session: Session, outcome: Outcome) -> None:
    mine = (
        (IdempotencyRecord.tenant_id == outcome.tenant_id)
        & (IdempotencyRecord.key == outcome.key)
        & (IdempotencyRecord.request_id == outcome.request_id)
    )
    if outcome.release:
        session.execute(delete(IdempotencyRecord).where(mine))
    else:
        session.execute(
            update(IdempotencyRecord)
            .where(mine)
            .values(state="done", status=outcome.status, response_body=outcome.body)
        )
