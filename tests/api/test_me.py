"""`GET /v1/me` on SQLite and PostgreSQL: a key learns its own tenant, scopes and model list, and
nothing about any other key."""

from __future__ import annotations

import pytest

from tests.conftest import Gateway

pytestmark = pytest.mark.anyio


async def test_a_key_sees_its_tenant_scopes_and_models(gateway: Gateway) -> None:
    async with gateway.client() as admin:
        assert (await admin.post("/v1/admin/tenants", json={"name": "acme"})).status_code == 201
        made = await admin.post(
            "/v1/admin/tenants/acme/keys", json={"scopes": ["inference"], "models": ["tiny-vit"]}
        )
        mine = (await admin.get("/v1/me")).json()
    assert mine["admin"] is True and "admin" in mine["scopes"] and mine["models"] is None
    async with gateway.client(made.json()["key"]) as tenant:
        answer = await tenant.get("/v1/me")
    assert answer.status_code == 200
    assert answer.json() == {
        "object": "key_identity",
        "key_id": made.json()["id"],
        "tenant": "acme",
        "scopes": ["inference"],
        "models": ["tiny-vit"],
        "admin": False,
    }


async def test_an_unknown_or_missing_key_is_refused(gateway: Gateway) -> None:
    async with gateway.client("mk_not_a_key") as stranger:
        assert (await stranger.get("/v1/me")).status_code == 401
    async with gateway.client(None) as anonymous:
        answer = await anonymous.get("/v1/me")
    assert answer.status_code == 401 and "missing API key" in answer.json()["error"]["message"]
