"""Monthly quotas in inputs: checked before a request runs, charged after it succeeds.

Months are calendar months in UTC. The count lives in the small `quota_usage` table (an atomic
upsert per answered request), so every replica sharing the database sees the same total. A
request that starts under the quota runs in full, so a tenant may end a month slightly over it.
Usage events and billing proper belong to metering, not here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Insert, select
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


class Quota:
    """Inputs used per tenant per month, in the database behind `sessions`."""

    def __init__(
        self, sessions: sessionmaker[Session], now: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._sessions = sessions
        self._now = now

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
        if self.used(caller.tenant_id, month_of(now)) >= quota:
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
            dialect = session.get_bind().dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            statement = insert(QuotaUsage).values(tenant_id=tenant_id, month=month, inputs=inputs)
            upsert: Insert = statement.on_conflict_do_update(
                index_elements=[QuotaUsage.tenant_id, QuotaUsage.month],
                set_={"inputs": QuotaUsage.inputs + statement.excluded.inputs},
            )
            session.execute(upsert)
