"""Monthly quotas in inputs: checked before a request runs, charged after it succeeds.

Months are calendar months in UTC. The count lives in the small `quota_usage` table (an atomic
upsert per answered request, in the same commit as its usage event where the request is
metered), so every replica sharing the database sees the same total. A request that starts under
the quota runs in full, so a tenant may end a month slightly over it.

Reading the count costs a database round trip per request, so a count read less than `FRESH_S`
ago is trusted while it leaves more than `margin(quota)` (a tenth of the quota, at least
`MARGIN_MIN` inputs): only then can a request be let in without a read, and a tenant can then
overshoot by at most what it sends, beyond that margin, in the second after the read. Near the
end of the quota (and for any quota of `MARGIN_MIN` inputs or fewer) every check reads the count,
and a refusal always comes from a fresh read.
Usage events and billing proper belong to metering, not here.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from sqlalchemy import Insert, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import QuotaUsage, Tenant
from service.errors import RateLimited
from service.tenancy.principal import Principal


def month_of(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m")


def next_month(when: datetime) -> datetime:
    when = when.astimezone(UTC)
    year, month = (when.year + 1, 1) if when.month == 12 else (when.year, when.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


FRESH_S = 1.0  # a count read this recently may let a request in without a read
MARGIN_MIN = 1000  # inputs: the least a trusted count must leave


def margin(quota: int) -> int:
    """What a trusted count must leave of `quota` to let a request in without a read."""
    return max(quota // 10, MARGIN_MIN)


class Quota:
    """Inputs used per tenant per month, in the database behind `sessions`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._now = now
        self._clock = clock
        self._read: dict[tuple[str, str], tuple[int, float]] = {}  # (tenant, month) -> (used, read at)

    def well_under(self, caller: Principal) -> bool:
        """Whether a count read less than `FRESH_S` ago leaves more than the margin of the caller's
        quota (no database read: see the module). False means: `check`."""
        quota = caller.monthly_quota_inputs
        if quota is None or caller.tenant_id is None:
            return True
        read = self._read.get((caller.tenant_id, month_of(self._now())))
        return read is not None and self._clock() - read[1] < FRESH_S and quota - read[0] > margin(quota)

    def used(self, tenant_id: str, month: str | None = None) -> int:
        month = month or month_of(self._now())
        with self._sessions() as session:
            found = session.scalar(
                select(QuotaUsage.inputs).where(QuotaUsage.tenant_id == tenant_id, QuotaUsage.month == month)
            )
        return int(found or 0)

    def check(self, caller: Principal) -> None:
        """429 when the caller's tenant has spent its monthly quota."""
        quota = caller.monthly_quota_inputs
        if quota is None or caller.tenant_id is None:
            return
        now = self._now()
        month = month_of(now)
        used = self.used(caller.tenant_id, month)
        self._read[caller.tenant_id, month] = (used, self._clock())
        if used >= quota:
            resets = next_month(now)
            raise RateLimited(
                f"monthly quota of {quota} inputs spent; resets on {resets:%Y-%m-%d}",
                retry_after_s=int((resets - now).total_seconds()) + 1,
            )

    def charge(self, tenant_id: str, inputs: int, *, only_if_limited: bool = False) -> None:
        """Add `inputs` to this month's count, atomically (one upsert); with `only_if_limited`,
        only where the tenant has a monthly quota (as requests are counted: only while one is set)."""
        month = month_of(self._now())
        with self._sessions.begin() as session:
            if only_if_limited:
                tenant = session.get(Tenant, tenant_id)
                if tenant is None or tenant.monthly_quota_inputs is None:
                    return
            add_to_quota(session, {(tenant_id, month): inputs})


def add_to_quota(session: Session, counts: Mapping[tuple[str, str], int]) -> None:
    """Add each (tenant, month)'s inputs to its count, in `session`'s transaction: one upsert
    statement for them all, in one order (tenant, month) for every writer."""
    if counts:
        rows = [{"tenant_id": t, "month": m, "inputs": n} for (t, m), n in sorted(counts.items())]
        session.connection().execute(_upsert(session.get_bind().dialect.name), rows)


@functools.cache
def _upsert(dialect: str) -> Insert:
    """The quota upsert for `dialect`, built once (building it cost more than running it)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(QuotaUsage).values(
        tenant_id=bindparam("tenant_id"), month=bindparam("month"), inputs=bindparam("inputs")
    )
    return statement.on_conflict_do_update(
        index_elements=[QuotaUsage.tenant_id, QuotaUsage.month],
        set_={"inputs": QuotaUsage.inputs + statement.excluded.inputs},
    )
