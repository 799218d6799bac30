"""Every number a request carries has a documented range that the database holds, checked at the
edge, on SQLite and PostgreSQL: a value past it (infinity, 2^70, year 0) is a 422 naming the
field, and the largest value allowed is stored and read back unchanged."""

from __future__ import annotations

import pytest

from service import bounds
from tests.api.test_refused_text import error_message
from tests.api.test_usage import tenant_key
from tests.conftest import Gateway

pytestmark = pytest.mark.anyio

# JSON written out by hand: 1e999 and NaN are what a hostile client sends, not what httpx encodes
OUT_OF_RANGE_BODIES = [
    ('{"name": "acme", "rate_limit_rps": 1e999}', "rate_limit_rps", "finite"),
    ('{"name": "acme", "rate_limit_rps": -1e999}', "rate_limit_rps", ""),
    ('{"name": "acme", "rate_limit_rps": NaN}', "rate_limit_rps", ""),
    ('{"name": "acme", "rate_limit_rps": 0}', "rate_limit_rps", "greater than 0"),
    ('{"name": "acme", "rate_limit_rps": 1e7}', "rate_limit_rps", "less than or equal to 1000000"),
    ('{"name": "acme", "max_concurrency": 1099511627776}', "max_concurrency", "100000"),
    ('{"name": "acme", "max_concurrency": 0}', "max_concurrency", "greater than or equal to 1"),
    ('{"name": "acme", "monthly_quota_inputs": 1180591620717411303424}', "monthly_quota_inputs", ""),
    ('{"name": "acme", "monthly_quota_inputs": 9223372036854775807}', "monthly_quota_inputs", ""),
    ('{"name": "acme", "monthly_quota_inputs": -1}', "monthly_quota_inputs", ""),
]


async def test_a_tenant_limit_out_of_range_is_422_on_create_and_on_patch(gateway: Gateway) -> None:
    json_body = {"Content-Type": "application/json"}
    async with gateway.client() as admin:
        assert (await admin.post("/v1/admin/tenants", json={"name": "acme"})).status_code == 201
        for body, field, says in OUT_OF_RANGE_BODIES:
            created = await admin.post(
                "/v1/admin/tenants", content=body.replace("acme", "new"), headers=json_body
            )
            message = error_message(created, 422, "invalid_input")
            assert f"body.{field}:" in message and says in message, (body, message)
            changes = body.replace('"name": "acme", ', "")
            patched = await admin.patch("/v1/admin/tenants/acme", content=changes, headers=json_body)
            assert f"body.{field}:" in error_message(patched, 422, "invalid_input"), changes
        assert (await admin.get("/v1/admin/tenants/new")).status_code == 404
        kept = (await admin.get("/v1/admin/tenants/acme")).json()
    assert [kept[field] for field in ("rate_limit_rps", "max_concurrency", "monthly_quota_inputs")] == [
        None
    ] * 3


async def test_the_largest_limits_are_stored_and_a_tenant_at_them_is_served(gateway: Gateway) -> None:
    largest = {
        "rate_limit_rps": bounds.MAX_RATE_LIMIT_RPS,
        "max_concurrency": bounds.MAX_CONCURRENCY,
        "monthly_quota_inputs": bounds.MAX_MONTHLY_QUOTA_INPUTS,
    }
    async with gateway.client() as admin:
        made = await admin.post("/v1/admin/tenants", json={"name": "big", **largest})
        assert made.status_code == 201, made.text
        assert {f: made.json()[f] for f in largest} == largest
        stored = (await admin.get("/v1/admin/tenants/big")).json()
        assert {f: stored[f] for f in largest} == largest
        made_key = await admin.post(
            "/v1/admin/tenants/big/keys", json={"rate_limit_rps": bounds.MAX_RATE_LIMIT_RPS}
        )
        assert made_key.status_code == 201, made_key.text
    async with gateway.client(made_key.json()["key"]) as big:
        assert (await big.get("/v1/models")).status_code == 200


KEY_FIELDS_OUT_OF_RANGE = [
    ("/v1/admin/tenants/default/keys", '{"rate_limit_rps": 1e999}', "rate_limit_rps"),
    ("/v1/admin/tenants/default/keys", '{"expires_at": "9999-12-31T23:00:00-10:00"}', "expires_at"),
    ("/v1/admin/tenants/default/keys", '{"expires_at": "0001-01-01T00:00:00+05:00"}', "expires_at"),
    ("/v1/admin/tenants/default/keys", '{"expires_at": "2001-01-01T00:00:00Z"}', "expires_at"),
    ("/v1/admin/keys/KEY/rotate", '{"grace_seconds": 1e999}', "grace_seconds"),
    ("/v1/admin/keys/KEY/rotate", '{"grace_seconds": NaN}', "grace_seconds"),
    ("/v1/admin/keys/KEY/rotate", '{"grace_seconds": 2592001}', "grace_seconds"),
    ("/v1/admin/keys/KEY/rotate", '{"grace_seconds": -1}', "grace_seconds"),
]


async def test_a_key_field_out_of_range_is_422(gateway: Gateway) -> None:
    async with gateway.client() as admin:
        made = await admin.post("/v1/admin/tenants/default/keys", json={"name": "first"})
        before = (await admin.get("/v1/admin/tenants/default/keys")).json()["data"]
        for path, body, field in KEY_FIELDS_OUT_OF_RANGE:
            refused = await admin.post(
                path.replace("KEY", made.json()["id"]),
                content=body,
                headers={"Content-Type": "application/json"},
            )
            assert f"body.{field}:" in error_message(refused, 422, "invalid_input"), body
        assert (await admin.get("/v1/admin/tenants/default/keys")).json()["data"] == before


QUERIES_OUT_OF_RANGE = [
    ("/v1/admin/billing/export", {"period": "0000-01"}, "period"),
    ("/v1/admin/billing/export", {"period": "9999-12"}, "period"),
    ("/v1/admin/billing/export", {"period": "2026-13"}, "period"),
    ("/v1/usage", {"start": "0001-01-01T00:00:00+05:00"}, "start"),
    ("/v1/usage", {"end": "9999-12-31T23:00:00-10:00"}, "end"),
    ("/v1/admin/usage", {"start": "0001-01-01T00:00:00+05:00"}, "start"),
    ("/v1/models/tiny-vit/predict", {"top_k": "0"}, "top_k"),
    ("/v1/models/tiny-vit/predict", {"top_k": str(bounds.MAX_TOP_K + 1)}, "top_k"),
    ("/v1/models/tiny-vit/predict", {"top_k": "1e999"}, "top_k"),
]


async def test_a_query_parameter_out_of_range_is_422(gateway: Gateway) -> None:
    async with gateway.client() as admin:
        for path, params, field in QUERIES_OUT_OF_RANGE:
            method = "POST" if path.endswith("/predict") else "GET"
            refused = await admin.request(method, path, params=params)
            assert f"query.{field}:" in error_message(refused, 422, "invalid_input"), params


async def test_the_first_and_last_billing_periods_and_times_are_answered(gateway: Gateway) -> None:
    async with gateway.client() as admin:
        for period in (bounds.FIRST_PERIOD, bounds.LAST_PERIOD):
            export = await admin.get("/v1/admin/billing/export", params={"period": period})
            assert export.status_code == 200 and export.json()["lines"] == [], export.text
        window = {"start": "0001-01-01T00:00:00Z", "end": "9999-12-31T23:59:59Z"}
        usage = await admin.get("/v1/admin/usage", params=window)
        assert usage.status_code == 200, usage.text


HYPERPARAMETERS_OUT_OF_RANGE = [
    (f'{{"seed": {10**30}}}', "seed"),
    (f'{{"seed": {bounds.MAX_SEED + 1}}}', "seed"),
    ('{"seed": -1}', "seed"),
    ('{"epochs": 0}', "epochs"),
    (f'{{"epochs": {bounds.MAX_EPOCHS + 1}}}', "epochs"),
    ('{"learning_rate": 0}', "learning_rate"),
    ('{"learning_rate": 2}', "learning_rate"),
    ('{"learning_rate": 1e999}', "learning_rate"),
    ('{"learning_rate": NaN}', "learning_rate"),
    (f'{{"batch_size": {bounds.MAX_BATCH_SIZE + 1}}}', "batch_size"),
    (f'{{"lora_rank": {bounds.MAX_LORA_RANK + 1}}}', "lora_rank"),
    (f'{{"lora_alpha": {bounds.MAX_LORA_ALPHA + 1}}}', "lora_alpha"),
    ('{"lora_alpha": 0}', "lora_alpha"),
]


async def test_a_hyperparameter_out_of_range_is_422_when_the_job_is_created(gateway: Gateway) -> None:
    key = await tenant_key(gateway, "acme")
    async with gateway.client(key) as acme:
        for hyperparameters, field in HYPERPARAMETERS_OUT_OF_RANGE:
            body = f'{{"base_model": "tiny-vit", "training_file": "f", "hyperparameters": {hyperparameters}}}'
            refused = await acme.post(
                "/v1/fine-tunes", content=body, headers={"Content-Type": "application/json"}
            )
            assert f"body.hyperparameters.{field}:" in error_message(refused, 422, "invalid_input"), body
        assert (await acme.get("/v1/fine-tunes")).json()["data"] == []
