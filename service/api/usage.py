"""Usage and billing: `GET /v1/usage` (the caller's tenant), `GET /v1/admin/usage` and
`GET /v1/admin/billing/export` (admin scope). Plain functions: FastAPI runs them on a worker
thread, so the database reads never block the event loop."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from service.api import schemas as s
from service.api.deps import Admin, Caller, Directory, Sessions
from service.bounds import FIRST_PERIOD, LAST_PERIOD, PERIOD, OptionalUtcTime, Period
from service.errors import InvalidInput, NotFound
from service.metering.reports import GROUPS, billing_csv, billing_export, parse_group_by, usage_summary

router = APIRouter(tags=["usage"])

Start = Annotated[
    OptionalUtcTime, Query(description="From this time (ISO 8601; default: start of this month, UTC).")
]
End = Annotated[OptionalUtcTime, Query(description="Until this time, excluded (default: now).")]
GroupBy = Annotated[str | None, Query(description="Comma-separated: model, day, key (admin: tenant too).")]


def _window(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    start = start or now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = end or now
    if end <= start:
        raise InvalidInput("end must be after start")
    return start, end


def _groups(group_by: str | None, allowed: tuple[str, ...]) -> list[str]:
    try:
        return parse_group_by(group_by, allowed)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


@router.get("/v1/usage", **s.documented(s.UsageReport, *s.AUTHENTICATED, 404))
def tenant_usage(
    sessions: Sessions, caller: Caller, start: Start = None, end: End = None, group_by: GroupBy = None
) -> dict[str, Any]:
    """The caller's tenant's requests, inputs, compute and cost in [start, end), per group."""
    if caller.tenant_id is None:
        raise NotFound("this key belongs to no tenant")
    begin, until = _window(start, end)
    groups = _groups(group_by, tuple(g for g in GROUPS if g != "tenant"))
    return usage_summary(sessions, tenant_id=caller.tenant_id, start=begin, end=until, group_by=groups)


@router.get("/v1/admin/usage", **s.documented(s.UsageReport, *s.AUTHENTICATED, 404))
def admin_usage(
    sessions: Sessions,
    _: Admin,
    tenants: Directory,
    tenant: Annotated[str | None, Query(description="A tenant's name; all tenants when left out.")] = None,
    start: Start = None,
    end: End = None,
    group_by: GroupBy = None,
) -> dict[str, Any]:
    tenant_id = tenants.get_tenant(tenant).id if tenant else None
    begin, until = _window(start, end)
    return usage_summary(
        sessions, tenant_id=tenant_id, start=begin, end=until, group_by=_groups(group_by, GROUPS)
    )


BILLING = s.documented(s.BillingExport, *s.AUTHENTICATED)
BILLING["responses"][200]["content"] = {"text/csv": {"schema": {"type": "string"}}}  # format=csv


@router.get("/v1/admin/billing/export", **BILLING)
def export_billing(
    sessions: Sessions,
    _: Admin,
    period: Annotated[
        Period,
        Query(
            pattern=f"^{PERIOD.pattern}$",
            description=f"The month, YYYY-MM (UTC), from {FIRST_PERIOD} to {LAST_PERIOD}.",
        ),
    ],
    format: Literal["json", "csv"] = "json",
) -> dict[str, Any] | Response:
    """Invoice lines per tenant, model and unit price; amounts in micro-units and as decimals."""
    export = billing_export(sessions, period)
    if format == "csv":
        return Response(
            billing_csv(export),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="maas-billing-{period}.csv"'},
        )
    return export
