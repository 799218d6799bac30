"""Reading usage back: totals grouped by model, day, key (and tenant), and the monthly invoice
lines of the billing export. Sums are SQL integer sums of the events' own micro-unit amounts,
so an invoice always equals its events to the micro-unit.

Inference and training are never summed together: every total and invoice line is also split by
`kind`, since their `inputs` count different things (images or texts; samples trained)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Tenant, UsageEvent
from service.metering.prices import MICRO, format_micro

GROUPS = ("tenant", "model", "day", "key")
INVOICE_FIELDS = (
    "tenant",
    "tenant_id",
    "model",
    "inputs",
    "requests",
    "compute_seconds",
    "unit_price",
    "unit_price_micro",
    "compute_second_price_micro",
    "amount",
    "amount_micro",
    "kind",  # last: the columns before it keep the places they had before training was billed
)


def parse_group_by(value: str | None, allowed: Sequence[str]) -> list[str]:
    """`model,day` -> ['model', 'day']; raises ValueError naming what is not allowed."""
    fields = [f.strip() for f in (value or "").split(",") if f.strip()]
    wrong = [f for f in fields if f not in allowed]
    if wrong:
        raise ValueError(f"group_by: {', '.join(wrong)} not one of {', '.join(allowed)}")
    return list(dict.fromkeys(fields))


def month_bounds(period: str) -> tuple[datetime, datetime]:
    """'2026-11' -> [2026-11-01, 2026-12-01) in UTC; raises ValueError for anything else."""
    start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def _day(session: Session) -> ColumnElement[str]:
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(UsageEvent.created_at, "YYYY-MM-DD")
    return func.substr(UsageEvent.created_at, 1, 10)  # SQLite keeps 'YYYY-MM-DD HH:MM:SS…'


def _tenant_names(session: Session) -> dict[str, str]:
    return {tenant_id: name for tenant_id, name in session.execute(select(Tenant.id, Tenant.name))}


def _seconds(us: int) -> str:
    return format_micro(us)  # microseconds -> seconds with six places, exactly


def usage_summary(
    sessions: sessionmaker[Session],
    *,
    tenant_id: str | None,
    start: datetime,
    end: datetime,
    group_by: Sequence[str],
) -> dict[str, Any]:
    """Requests, billed inputs, compute and cost in [start, end), per group."""
    with sessions() as session:
        columns: dict[str, Any] = {
            "tenant": UsageEvent.tenant_id,
            "model": UsageEvent.model,
            "day": _day(session),
            "key": UsageEvent.key_id,
        }
        keys = [*(columns[g].label(g) for g in group_by), UsageEvent.kind.label("kind")]
        ok = UsageEvent.status == 200
        query = select(
            *keys,
            func.count().label("requests"),
            func.coalesce(func.sum(case((ok, 0), else_=1)), 0).label("errors"),
            func.coalesce(func.sum(case((ok, UsageEvent.inputs), else_=0)), 0).label("inputs"),
            func.coalesce(func.sum(UsageEvent.compute_us), 0).label("compute_us"),
            func.coalesce(func.sum(UsageEvent.amount_micro), 0).label("amount_micro"),
        ).where(and_(UsageEvent.created_at >= start, UsageEvent.created_at < end))
        if tenant_id is not None:
            query = query.where(UsageEvent.tenant_id == tenant_id)
        rows = session.execute(query.group_by(*keys).order_by(*keys)).all()
        names = _tenant_names(session) if "tenant" in group_by else {}
    data = []
    for row in rows:
        item: dict[str, Any] = {g: getattr(row, g) for g in group_by}
        if "tenant" in item:
            item["tenant_name"] = names.get(item["tenant"])
        item.update(
            kind=row.kind,
            requests=int(row.requests),
            errors=int(row.errors),
            inputs=int(row.inputs),
            compute_seconds=_seconds(int(row.compute_us)),
            cost_micro=int(row.amount_micro),
            cost=format_micro(int(row.amount_micro)),
        )
        data.append(item)
    total = sum(d["cost_micro"] for d in data)
    return {
        "object": "usage",
        "start": start.isoformat(),
        "end": end.isoformat(),
        "group_by": list(group_by),
        "data": data,
        "total_cost_micro": total,
        "total_cost": format_micro(total),
    }


def invoice_lines(sessions: sessionmaker[Session], period: str) -> list[dict[str, Any]]:
    """One line per tenant, model, kind and unit price (a price change mid-month gives two lines),
    over the answered (200) requests and the billed fine-tuning jobs of the month. A training
    line's inputs are samples trained, its requests jobs, its compute seconds device time."""
    start, end = month_bounds(period)
    query = (
        select(
            UsageEvent.tenant_id,
            UsageEvent.model,
            UsageEvent.kind,
            UsageEvent.per_input_micro,
            UsageEvent.per_compute_second_micro,
            func.count().label("requests"),
            func.sum(UsageEvent.inputs).label("inputs"),
            func.sum(UsageEvent.compute_us).label("compute_us"),
            func.sum(UsageEvent.amount_micro).label("amount_micro"),
        )
        .where(UsageEvent.created_at >= start, UsageEvent.created_at < end, UsageEvent.status == 200)
        .group_by(
            UsageEvent.tenant_id,
            UsageEvent.model,
            UsageEvent.kind,
            UsageEvent.per_input_micro,
            UsageEvent.per_compute_second_micro,
        )
        .order_by(UsageEvent.tenant_id, UsageEvent.model, UsageEvent.kind, UsageEvent.per_input_micro)
    )
    with sessions() as session:
        rows = session.execute(query).all()
        names = _tenant_names(session)
    return [
        {
            "tenant": names.get(row.tenant_id, row.tenant_id),
            "tenant_id": row.tenant_id,
            "model": row.model,
            "kind": row.kind,
            "inputs": int(row.inputs),
            "requests": int(row.requests),
            "compute_seconds": _seconds(int(row.compute_us)),
            "unit_price": format_micro(int(row.per_input_micro)),
            "unit_price_micro": int(row.per_input_micro),
            "compute_second_price_micro": int(row.per_compute_second_micro),
            "amount": format_micro(int(row.amount_micro)),
            "amount_micro": int(row.amount_micro),
        }
        for row in rows
    ]


def billing_export(sessions: sessionmaker[Session], period: str) -> dict[str, Any]:
    lines = invoice_lines(sessions, period)
    total = sum(line["amount_micro"] for line in lines)
    return {
        "object": "billing_export",
        "period": period,
        "currency_unit_micro": MICRO,
        "lines": lines,
        "total_micro": total,
        "total": format_micro(total),
    }


def billing_csv(export: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=INVOICE_FIELDS, lineterminator="\n")
    writer.writeheader()
    for line in export["lines"]:
        writer.writerow(line)
    return out.getvalue()
