"""Tenants, keys, usage and billing through the client, against the real `maas serve` process."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from conftest import ADMIN_KEY, PRICE_MICRO, png, unique
from maas_client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)

from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e


@pytest.fixture
def admin(gateway: Server) -> Iterator[Client]:
    with Client(gateway.base_url, ADMIN_KEY) as client:
        yield client


def test_tenants_create_list_get_update_suspend_resume(gateway: Server, admin: Client) -> None:
    name = unique("acme")
    created = admin.admin.tenants.create(
        name, rate_limit_rps=5, max_concurrency=4, monthly_quota_inputs=1000, allowed_models=["tiny-vit"]
    )
    assert created.name == name and created.id and created.status == "active" and created.created_at
    assert (created.rate_limit_rps, created.max_concurrency, created.monthly_quota_inputs) == (5.0, 4, 1000)
    assert created.allowed_models == ["tiny-vit"] and created.raw["object"] == "tenant"
    with pytest.raises(ConflictError):
        admin.admin.tenants.create(name)
    assert created in admin.admin.tenants.list()
    assert admin.admin.tenants.get(name) == created
    with pytest.raises(NotFoundError):
        admin.admin.tenants.get(unique("nobody"))

    # only what is given changes; None lifts a limit
    changed = admin.admin.tenants.update(name, rate_limit_rps=None, allowed_models=("tiny-vit", "missing"))
    assert changed.rate_limit_rps is None and changed.max_concurrency == 4
    assert changed.monthly_quota_inputs == 1000 and changed.allowed_models == ["missing", "tiny-vit"]

    key = admin.admin.keys.create(name).key
    with Client(gateway.base_url, key) as tenant:
        assert {m.id for m in tenant.models.list()} == {"tiny-vit", "missing"}  # the allow-list
        assert admin.admin.tenants.suspend(name).status == "suspended"
        with pytest.raises(PermissionDeniedError):
            tenant.models.list()
        assert admin.admin.tenants.resume(name).status == "active"
        assert tenant.models.get("tiny-vit").status == "ready"


def test_keys_create_list_rotate_revoke(gateway: Server, admin: Client) -> None:
    name = unique("keys")
    admin.admin.tenants.create(name)
    expires = datetime.now(UTC) + timedelta(days=30)
    made = admin.admin.keys.create(
        name, name="ci", scopes=["inference"], models=["tiny-vit"], expires_at=expires, rate_limit_rps=50
    )
    assert made.key and made.key.startswith("mk_") and made.key.startswith(made.prefix or "-")
    assert made.id.startswith("key_") and made.tenant == name and made.name == "ci"
    assert made.scopes == ["inference"] and made.models == ["tiny-vit"] and made.rate_limit_rps == 50
    assert made.expires_at is not None
    shown = datetime.fromisoformat(made.expires_at)
    assert abs((shown if shown.tzinfo else shown.replace(tzinfo=UTC)) - expires) < timedelta(seconds=1)
    assert not made.revoked and made.key not in repr(made)
    (listed,) = admin.admin.keys.list(name)
    assert listed.id == made.id and listed.key is None and listed.prefix == made.prefix

    with Client(gateway.base_url, made.key) as old:
        assert old.predict("tiny-vit", png()).usage.inputs == 1
        with pytest.raises(PermissionDeniedError):  # an inference key may not use admin routes
            old.admin.tenants.list()
        with pytest.raises(PermissionDeniedError):  # nor fine-tuning (not in its scopes)
            old.fine_tunes.list()
        assert old.files.list() == []  # it sees its tenant's batch files only: none
        rotated = admin.admin.keys.rotate(made.id)  # no grace: the old key stops at once
        assert rotated.key and rotated.key != made.key and rotated.replaces is not None
        assert rotated.replaces.id == made.id and rotated.replaces.expires_at
        assert datetime.fromisoformat(rotated.replaces.expires_at) <= datetime.now(UTC)  # no grace left
        assert rotated.scopes == ["inference"] and rotated.models == ["tiny-vit"]
        with pytest.raises(AuthenticationError):
            old.models.list()
    with Client(gateway.base_url, rotated.key) as new:
        assert new.models.get("tiny-vit").id == "tiny-vit"
        revoked = admin.admin.keys.revoke(rotated.id)
        assert revoked.id == rotated.id and revoked.revoked and revoked.revoked_at
        with pytest.raises(AuthenticationError):
            new.models.list()
    assert {k.id: k.revoked for k in admin.admin.keys.list(name)} == {made.id: False, rotated.id: True}
    with pytest.raises(ConflictError):
        admin.admin.keys.rotate(rotated.id)


def test_a_key_learns_its_tenant_scopes_and_models(gateway: Server, admin: Client) -> None:
    name = unique("me")
    admin.admin.tenants.create(name)
    made = admin.admin.keys.create(name, scopes=["inference"], models=["tiny-vit"])
    with Client(gateway.base_url, made.key) as client:
        me = client.me()
    assert (me.key_id, me.tenant, me.scopes, me.models, me.admin) == (
        made.id,
        name,
        ["inference"],
        ["tiny-vit"],
        False,
    )
    assert admin.me().admin is True


def test_usage_of_the_callers_tenant_grouped_and_windowed(gateway: Server, admin: Client) -> None:
    name = unique("usage")
    admin.admin.tenants.create(name)
    key = admin.admin.keys.create(name).key
    with Client(gateway.base_url, key) as client:
        assert client.usage.get().data == []  # nothing yet: no row at all
        one = client.predict("tiny-vit", png())
        two = client.predict("tiny-vit", [png(), png((0, 0, 200))])
        assert one.usage.cost_micro == PRICE_MICRO and one.usage.cost == Decimal("0.001")
        assert two.usage.cost_micro == 2 * PRICE_MICRO and two.usage.compute_ms is not None
        assert two.usage.compute_ms > 0
        with pytest.raises(NotFoundError):
            client.predict("no-such-model", png())  # an error is counted, never billed

        (total,) = client.usage.get().data
        assert (total.requests, total.errors, total.inputs) == (3, 1, 3)
        assert total.cost_micro == 3 * PRICE_MICRO and total.cost == Decimal("0.003")
        assert total.compute_seconds > 0 and total.model is None

        today = datetime.now(UTC).date()
        report = client.usage.get(group_by=["model", "day"], start=today, end=today + timedelta(days=1))
        assert report.group_by == ["model", "day"] and report.total_cost_micro == 3 * PRICE_MICRO
        assert report.total_cost == Decimal("0.003") and report.start and report.end
        by_model = {row.model: row for row in report.data}
        assert by_model["tiny-vit"].inputs == 3 and by_model["tiny-vit"].day == today.isoformat()
        assert by_model["no-such-model"].errors == 1 and by_model["no-such-model"].inputs == 0
        (per_key,) = client.usage.get(group_by="key").data
        assert per_key.key and per_key.key.startswith("key_")

        tomorrow = datetime.now(UTC) + timedelta(days=1)
        assert client.usage.get(start=tomorrow, end=tomorrow + timedelta(hours=1)).data == []
        assert client.usage.get(start="2020-01-01", end=date(2020, 2, 1)).total_cost_micro == 0
        with pytest.raises(InvalidInputError):
            client.usage.get(start=tomorrow, end=datetime.now(UTC))
        with pytest.raises(InvalidInputError):
            client.usage.get(group_by=["tenant"])  # only admins group by tenant


def test_admin_usage_and_billing_export(gateway: Server, admin: Client) -> None:
    name = unique("billed")
    admin.admin.tenants.create(name)
    key = admin.admin.keys.create(name).key
    with Client(gateway.base_url, key) as client:
        client.predict("tiny-vit", [png(), png(), png()])
        with pytest.raises(PermissionDeniedError):
            client.admin.usage.get()
        with pytest.raises(PermissionDeniedError):
            client.admin.billing.export("2026-01")

    (row,) = admin.admin.usage.get(tenant=name, group_by=["tenant", "model"]).data
    assert row.tenant_name == name and row.tenant and row.model == "tiny-vit" and row.inputs == 3
    everyone = admin.admin.usage.get(group_by="tenant").data
    assert name in {r.tenant_name for r in everyone}
    with pytest.raises(NotFoundError):
        admin.admin.usage.get(tenant=unique("nobody"))

    period = datetime.now(UTC).strftime("%Y-%m")
    export = admin.admin.billing.export(period)
    (line,) = [line for line in export.lines if line.tenant == name]
    assert export.period == period and line.model == "tiny-vit" and line.inputs == 3
    assert line.amount_micro == 3 * PRICE_MICRO and line.amount == Decimal("0.003")
    assert line.unit_price_micro == PRICE_MICRO and export.total_micro >= line.amount_micro
    csv = admin.admin.billing.export_csv(period)
    assert csv.splitlines()[0].startswith("tenant,tenant_id,model,inputs")
    assert any(r.startswith(f"{name},") and ",tiny-vit,3," in r for r in csv.splitlines())
    with pytest.raises(InvalidInputError):
        admin.admin.billing.export("2026-13")


@pytest.mark.anyio
async def test_async_admin_and_usage(gateway: Server) -> None:
    name = unique("async")
    async with AsyncClient(gateway.base_url, ADMIN_KEY) as admin:
        tenant = await admin.admin.tenants.create(name, monthly_quota_inputs=10)
        assert tenant.monthly_quota_inputs == 10 and tenant in await admin.admin.tenants.list()
        assert (await admin.admin.tenants.get(name)).id == tenant.id
        assert (await admin.admin.tenants.update(name, max_concurrency=2)).max_concurrency == 2
        assert (await admin.admin.tenants.suspend(name)).status == "suspended"
        assert (await admin.admin.tenants.resume(name)).status == "active"
        made = await admin.admin.keys.create(name, name="a")
        assert made.key and [k.id for k in await admin.admin.keys.list(name)] == [made.id]
        async with AsyncClient(gateway.base_url, made.key) as client:
            assert (await client.me()).key_id == made.id
            await client.predict("tiny-vit", [png(), png()])
            (row,) = (await client.usage.get(group_by=["model"], start=date.today() - timedelta(days=1))).data
            assert row.model == "tiny-vit" and row.inputs == 2 and row.cost_micro == 2 * PRICE_MICRO
        (row,) = (await admin.admin.usage.get(tenant=name)).data
        assert row.inputs == 2
        period = datetime.now(UTC).strftime("%Y-%m")
        assert name in {line.tenant for line in (await admin.admin.billing.export(period)).lines}
        assert name in await admin.admin.billing.export_csv(period)
        rotated = await admin.admin.keys.rotate(made.id, grace_seconds=3600)
        assert rotated.replaces is not None and rotated.replaces.id == made.id
        async with AsyncClient(gateway.base_url, made.key) as old:
            assert (await old.models.get("tiny-vit")).id == "tiny-vit"  # still in its grace period
        assert (await admin.admin.keys.revoke(made.id)).revoked
