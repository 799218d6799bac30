"""`/v1/admin/…` in-process, on SQLite and PostgreSQL: tenants and keys, and who may touch them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.settings import Settings
from tests.conftest import Gateway

pytestmark = pytest.mark.anyio


async def _tenant(gateway: Gateway, name: str, **limits: Any) -> dict[str, Any]:
    async with gateway.client() as admin:
        response = await admin.post("/v1/admin/tenants", json={"name": name, **limits})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _key(gateway: Gateway, tenant: str, **fields: Any) -> dict[str, Any]:
    async with gateway.client() as admin:
        response = await admin.post(f"/v1/admin/tenants/{tenant}/keys", json=fields)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_tenants_are_created_listed_and_unique(gateway: Gateway) -> None:
    made = await _tenant(gateway, "acme", rate_limit_rps=5, max_concurrency=2, monthly_quota_inputs=1000)
    assert made["id"].startswith("ten_") and made["status"] == "active"
    assert (made["rate_limit_rps"], made["max_concurrency"], made["monthly_quota_inputs"]) == (5, 2, 1000)
    async with gateway.client() as admin:
        again = await admin.post("/v1/admin/tenants", json={"name": "acme"})
        assert again.status_code == 409 and again.json()["error"]["type"] == "conflict"
        bad = await admin.post("/v1/admin/tenants", json={"name": "Not OK"})
        assert bad.status_code == 422 and "tenant name" in bad.json()["error"]["message"]
        extra = await admin.post("/v1/admin/tenants", json={"name": "x", "owner": "me"})
        assert extra.status_code == 422
        listed = (await admin.get("/v1/admin/tenants")).json()["data"]
        assert {t["name"] for t in listed} == {"default", "acme"}
        assert (await admin.get("/v1/admin/tenants/acme")).json()["id"] == made["id"]
        assert (await admin.get("/v1/admin/tenants/nope")).status_code == 404


async def test_a_key_is_shown_once_and_lists_never_show_a_secret(gateway: Gateway) -> None:
    await _tenant(gateway, "acme")
    made = await _key(gateway, "acme", name="ci", models=["tiny-vit"])
    assert made["key"].startswith("mk_") and made["id"].startswith("key_")
    assert made["scopes"] == ["fine_tune", "inference"] and made["models"] == ["tiny-vit"]
    async with gateway.client() as admin:
        listed = await admin.get("/v1/admin/tenants/acme/keys")
    [shown] = listed.json()["data"]
    assert shown["id"] == made["id"] and shown["prefix"] == made["key"][:11]
    assert made["key"] not in listed.text and "hash" not in listed.text and "key" not in shown
    async with gateway.client(made["key"]) as tenant:
        assert (await tenant.get("/v1/models")).status_code == 200


async def test_key_fields_are_checked(gateway: Gateway) -> None:
    await _tenant(gateway, "acme")
    async with gateway.client() as admin:
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        for body in ({"scopes": ["root"]}, {"expires_at": past}, {"rate_limit_rps": 0}, {"secret": "x"}):
            response = await admin.post("/v1/admin/tenants/acme/keys", json=body)
            assert response.status_code == 422, body
        assert (await admin.post("/v1/admin/tenants/nope/keys", json={})).status_code == 404


ADMIN_ROUTES = [
    ("POST", "/v1/admin/tenants", {"name": "evil"}),
    ("GET", "/v1/admin/tenants", None),
    ("GET", "/v1/admin/tenants/globex", None),
    ("PATCH", "/v1/admin/tenants/globex", {"rate_limit_rps": 1000}),
    ("POST", "/v1/admin/tenants/globex/suspend", None),
    ("POST", "/v1/admin/tenants/globex/resume", None),
    ("POST", "/v1/admin/tenants/globex/keys", {}),
    ("GET", "/v1/admin/tenants/globex/keys", None),
    ("GET", "/v1/admin/tenants/acme/keys", None),  # not even its own tenant's: admin is for operators
    ("DELETE", "/v1/admin/keys/{globex_key}", None),
    ("POST", "/v1/admin/keys/{globex_key}/rotate", None),
]


async def test_one_tenants_key_cannot_touch_another_tenant_or_any_admin_route(gateway: Gateway) -> None:
    await _tenant(gateway, "acme")
    await _tenant(gateway, "globex")
    acme = await _key(gateway, "acme", scopes=["inference", "fine_tune"])
    globex = await _key(gateway, "globex")
    async with gateway.client(acme["key"]) as tenant, gateway.client(None) as anonymous:
        for method, path, body in ADMIN_ROUTES:
            url = path.format(globex_key=globex["id"])
            refused = await tenant.request(method, url, json=body)
            assert refused.status_code == 403, (method, url, refused.text)
            assert refused.json()["error"]["type"] == "permission_denied"
            assert (await anonymous.request(method, url, json=body)).status_code == 401
    async with gateway.client(globex["key"]) as other:  # globex is untouched
        assert (await other.get("/v1/models")).status_code == 200
    async with gateway.client() as admin:
        assert {t["name"] for t in (await admin.get("/v1/admin/tenants")).json()["data"]} == {
            "default",
            "acme",
            "globex",
        }


async def test_a_revoked_key_fails_on_the_next_request(gateway: Gateway) -> None:
    await _tenant(gateway, "acme")
    made = await _key(gateway, "acme")
    async with gateway.client(made["key"]) as tenant, gateway.client() as admin:
        assert (await tenant.get("/v1/models")).status_code == 200
        revoked = await admin.delete(f"/v1/admin/keys/{made['id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        refused = await tenant.get("/v1/models")
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        assert made["key"] not in refused.text
        assert (await admin.delete("/v1/admin/keys/key_nope")).status_code == 404
        in_url = await admin.delete(f"/v1/admin/keys/{made['key']}")
        assert in_url.status_code == 400 and made["key"] not in in_url.text


async def test_an_expired_key_is_401(gateway: Gateway) -> None:
    await _tenant(gateway, "acme")
    tenants = gateway.app.state.gateway.tenants
    expired = tenants.create_key("acme", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    async with gateway.client(expired.key) as tenant:
        assert (await tenant.get("/v1/models")).status_code == 401


async def test_a_suspended_tenant_gets_403_until_resumed(gateway: Gateway) -> None:
    await _tenant(gateway, "acme")
    made = await _key(gateway, "acme")
    async with gateway.client(made["key"]) as tenant, gateway.client() as admin:
        assert (await admin.post("/v1/admin/tenants/acme/suspend")).json()["status"] == "suspended"
        refused = await tenant.get("/v1/models")
        assert refused.status_code == 403 and "suspended" in refused.json()["error"]["message"]
        assert (await admin.post("/v1/admin/tenants/acme/resume")).json()["status"] == "active"
        assert (await tenant.get("/v1/models")).status_code == 200


async def test_rotation_gives_a_new_key_and_ends_the_old_one_after_the_grace(gateway: Gateway) -> None:
    await _tenant(gateway, "acme")
    old = await _key(gateway, "acme", name="ci")
    async with gateway.client() as admin:
        graced = await admin.post(f"/v1/admin/keys/{old['id']}/rotate", json={"grace_seconds": 3600})
        assert graced.status_code == 201
        new = graced.json()
        assert new["key"] != old["key"] and new["name"] == "ci" and new["replaces"]["id"] == old["id"]
        async with gateway.client(old["key"]) as before, gateway.client(new["key"]) as after:
            assert (await before.get("/v1/models")).status_code == 200  # within the grace
            assert (await after.get("/v1/models")).status_code == 200
        at_once = await admin.post(f"/v1/admin/keys/{new['id']}/rotate")
        assert at_once.status_code == 201
        async with gateway.client(new["key"]) as ended:
            assert (await ended.get("/v1/models")).status_code == 401


async def test_the_generated_admin_key_is_a_revocable_key_of_the_default_tenant(
    settings: Settings, database_url: str
) -> None:
    from service.app import create_app

    app = create_app(settings.model_copy(update={"database_url": database_url, "admin_key": None}))
    async with app.router.lifespan_context(app):
        key = (settings.data_dir / "admin.key").read_text().strip()
        gateway = Gateway(app)
        async with gateway.client(key) as admin:
            [listed] = (await admin.get("/v1/admin/tenants/default/keys")).json()["data"]
            assert listed["scopes"] == ["admin", "fine_tune", "inference"] and listed["prefix"] == key[:11]
            made = await admin.post("/v1/admin/tenants", json={"name": "acme"})
            assert made.status_code == 201
    # a restart does not add it twice
    async with app.router.lifespan_context(app), Gateway(app).client(key) as admin:
        assert len((await admin.get("/v1/admin/tenants/default/keys")).json()["data"]) == 1


async def test_a_tenants_limits_change_with_patch(gateway: Gateway) -> None:
    await _tenant(gateway, "acme", rate_limit_rps=5, monthly_quota_inputs=10)
    made = await _key(gateway, "acme")
    async with gateway.client() as admin:
        changed = await admin.patch(
            "/v1/admin/tenants/acme", json={"rate_limit_rps": 0.01, "allowed_models": ["x"]}
        )
        assert changed.status_code == 200, changed.text
        body = changed.json()
        assert (body["rate_limit_rps"], body["monthly_quota_inputs"], body["allowed_models"]) == (
            0.01,
            10,
            ["x"],
        )
        cleared = (await admin.patch("/v1/admin/tenants/acme", json={"monthly_quota_inputs": None})).json()
        assert cleared["monthly_quota_inputs"] is None and cleared["rate_limit_rps"] == 0.01
        assert (await admin.patch("/v1/admin/tenants/acme", json={"name": "evil"})).status_code == 422
        assert (await admin.patch("/v1/admin/tenants/nope", json={})).status_code == 404
    async with gateway.client(made["key"]) as tenant:  # the next request sees the new model list
        assert [m["id"] for m in (await tenant.get("/v1/models")).json()["data"]] == []
