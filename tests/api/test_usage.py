"""`/v1/usage`, `/v1/admin/usage` and the billing export, on SQLite and PostgreSQL: the invoice
totals equal the sum of the raw events to the micro-unit, and a price change keeps old prices."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.db.models import UsageEvent
from service.settings import Settings
from tests.conftest import Gateway, image_bytes, write_tiny_vit

pytestmark = pytest.mark.anyio
PREDICT = "/v1/models/tiny-vit/predict"


def period() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


def files(count: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"{i}.png", image_bytes(), "image/png")) for i in range(count)]


def event_totals(app: FastAPI) -> tuple[int, int]:
    """(amount, inputs) summed straight from the events answered 200."""
    sessions: sessionmaker[Session] = app.state.gateway.sessions
    with sessions() as session:
        row = session.execute(
            select(func.sum(UsageEvent.amount_micro), func.sum(UsageEvent.inputs)).where(
                UsageEvent.status == 200
            )
        ).one()
    return int(row[0] or 0), int(row[1] or 0)


async def tenant_key(gateway: Gateway, name: str) -> str:
    async with gateway.client() as admin:
        assert (await admin.post("/v1/admin/tenants", json={"name": name})).status_code == 201
        made = await admin.post(f"/v1/admin/tenants/{name}/keys", json={})
    key: str = made.json()["key"]
    return key


async def test_usage_and_billing_export_match_the_events(gateway: Gateway) -> None:
    key = await tenant_key(gateway, "acme")
    async with gateway.client(key) as acme, gateway.client() as admin:
        for count in (1, 3, 2):
            assert (await acme.post(PREDICT, files=files(count))).status_code == 200
        assert (
            await acme.post(PREDICT, content=b"junk", headers={"Content-Type": "image/png"})
        ).status_code == 422
        assert (await admin.post(PREDICT, files=files(4))).status_code == 200  # the default tenant

        mine = (await acme.get("/v1/usage")).json()
        assert mine["data"] == [
            {
                "kind": "inference",
                "requests": 4,
                "errors": 1,
                "inputs": 6,
                "compute_seconds": mine["data"][0]["compute_seconds"],
                "cost_micro": 6000,
                "cost": "0.006000",
            }
        ]
        grouped = (await acme.get("/v1/usage", params={"group_by": "model,day,key"})).json()["data"]
        assert [(g["model"], g["day"], g["inputs"]) for g in grouped] == [
            ("tiny-vit", datetime.now(UTC).strftime("%Y-%m-%d"), 6)
        ]
        assert (await acme.get("/v1/usage", params={"group_by": "tenant"})).status_code == 422
        assert (await acme.get("/v1/admin/usage")).status_code == 403
        assert (await acme.get("/v1/admin/billing/export", params={"period": period()})).status_code == 403

        one = (await admin.get("/v1/admin/usage", params={"tenant": "acme", "group_by": "model"})).json()
        assert one["total_cost_micro"] == 6000
        every = (await admin.get("/v1/admin/usage", params={"group_by": "tenant"})).json()
        assert {(d["tenant_name"], d["cost_micro"]) for d in every["data"]} == {
            ("acme", 6000),
            ("default", 4000),
        }

        export = (await admin.get("/v1/admin/billing/export", params={"period": period()})).json()
        as_csv = (
            await admin.get("/v1/admin/billing/export", params={"period": period(), "format": "csv"})
        ).text
        assert (await admin.get("/v1/admin/billing/export", params={"period": "2026-13"})).status_code == 422
        empty = (await admin.get("/v1/admin/billing/export", params={"period": "2001-01"})).json()
    amount, inputs = event_totals(gateway.app)
    assert export["total_micro"] == sum(line["amount_micro"] for line in export["lines"]) == amount == 10_000
    assert sum(line["inputs"] for line in export["lines"]) == inputs == 10
    lines = {line["tenant"]: line for line in export["lines"]}
    assert lines["acme"]["amount"] == "0.006000" and lines["acme"]["unit_price"] == "0.001000"
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    assert sum(int(r["amount_micro"]) for r in rows) == amount
    assert empty["lines"] == [] and empty["total_micro"] == 0


async def test_a_price_change_applies_from_then_on_and_old_usage_keeps_its_price(
    settings: Settings, database_url: str, tiny_vit_dir: Path
) -> None:
    settings = settings.model_copy(update={"database_url": database_url})

    async def serve(price: str, inputs: int) -> dict[str, Any]:
        write_tiny_vit(settings.models_dir, tiny_vit_dir, price=price, batching=None)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            await app.state.gateway.registry.preload_done.wait()
            gateway = Gateway(app)
            async with gateway.client() as admin:
                assert (await admin.post(PREDICT, files=files(inputs))).status_code == 200
                export: dict[str, Any] = (
                    await admin.get("/v1/admin/billing/export", params={"period": period()})
                ).json()
                export["events"] = event_totals(app)
        return export

    await serve("{per_image: 0.001}", 2)
    export = await serve("{per_image: 0.0025, per_compute_second: 0.5}", 1)
    prices = sorted(
        (line["unit_price_micro"], line["compute_second_price_micro"], line["inputs"])
        for line in export["lines"]
    )
    assert prices == [(1000, 0, 2), (2500, 500_000, 1)]
    assert export["total_micro"] == export["events"][0]
    new = next(line for line in export["lines"] if line["unit_price_micro"] == 2500)
    assert new["amount_micro"] >= 2500  # 2500 per input plus its compute time at 0.5 per second


async def test_a_rate_limited_request_is_recorded_free_with_its_429(gateway: Gateway) -> None:
    async with gateway.client() as admin:
        assert (
            await admin.post("/v1/admin/tenants", json={"name": "slow", "rate_limit_rps": 0.01})
        ).status_code == 201
        key = (await admin.post("/v1/admin/tenants/slow/keys", json={})).json()["key"]
    async with gateway.client(key) as tenant:
        assert (await tenant.post(PREDICT, files=files(1))).status_code == 200
        refused = await tenant.post(PREDICT, files=files(1))
        assert refused.status_code == 429
        usage = (await tenant.get("/v1/usage")).json()["data"]
    assert usage[0]["requests"] == 2 and usage[0]["errors"] == 1 and usage[0]["cost_micro"] == 1000
    sessions: sessionmaker[Session] = gateway.app.state.gateway.sessions
    with sessions() as session:
        event = session.get(UsageEvent, refused.headers["x-request-id"])
    assert event is not None and (event.status, event.amount_micro, event.model) == (429, 0, "tiny-vit")
