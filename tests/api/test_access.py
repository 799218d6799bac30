"""Who may predict and list which models, and the rate limits and quota on predict, in-process."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from service.settings import Settings
from tests.conftest import Gateway, image_bytes

pytestmark = pytest.mark.anyio

PNG = {"content": image_bytes(), "headers": {"Content-Type": "image/png"}}


async def _key(
    gateway: Gateway, tenant: str, tenant_fields: dict[str, Any] | None = None, **fields: Any
) -> str:
    tenants = gateway.app.state.gateway.tenants
    if tenant not in {t.name for t in tenants.list_tenants()}:
        tenants.create_tenant(tenant, **(tenant_fields or {}))
    made: str = tenants.create_key(tenant, **fields).key
    return made


async def test_a_key_without_the_inference_scope_may_not_predict(gateway: Gateway) -> None:
    key = await _key(gateway, "acme", scopes=["fine_tune"])
    async with gateway.client(key) as tenant:
        refused = await tenant.post("/v1/models/tiny-vit/predict", **PNG)
    assert refused.status_code == 403 and "'inference' scope" in refused.json()["error"]["message"]


async def test_a_keys_model_list_limits_predict_and_the_models_list(gateway: Gateway) -> None:
    key = await _key(gateway, "acme", models=["missing"])
    async with gateway.client(key) as tenant:
        refused = await tenant.post("/v1/models/tiny-vit/predict", **PNG)
        assert refused.status_code == 403 and "'tiny-vit'" in refused.json()["error"]["message"]
        assert (await tenant.get("/v1/models/tiny-vit")).status_code == 403
        assert [m["id"] for m in (await tenant.get("/v1/models")).json()["data"]] == ["missing"]
        assert (await tenant.post("/v1/models/nope/predict", **PNG)).status_code == 404


async def test_a_tenants_allowed_models_bind_all_its_keys(gateway: Gateway) -> None:
    key = await _key(gateway, "acme", {"allowed_models": ["tiny-vit"]})
    async with gateway.client(key) as tenant:
        assert (await tenant.post("/v1/models/tiny-vit/predict", **PNG)).status_code == 200
        assert (await tenant.get("/v1/models/missing")).status_code == 403
        assert [m["id"] for m in (await tenant.get("/v1/models")).json()["data"]] == ["tiny-vit"]


async def test_refusals_for_scope_or_model_spend_no_rate_limit_tokens(gateway: Gateway) -> None:
    # the tenant's one token (burst 1, no refill within the test) is shared by all its keys
    fine_tuner = await _key(gateway, "acme", {"rate_limit_rps": 0.01}, scopes=["fine_tune"])
    other_model = await _key(gateway, "acme", models=["missing"])
    predictor = await _key(gateway, "acme")
    for key in (fine_tuner, other_model):
        async with gateway.client(key) as refused:
            for _ in range(3):
                assert (await refused.post("/v1/models/tiny-vit/predict", **PNG)).status_code == 403
    async with gateway.client(predictor) as tenant:
        assert (await tenant.post("/v1/models/nope/predict", **PNG)).status_code == 404
        allowed = await tenant.post("/v1/models/tiny-vit/predict", **PNG)
        assert allowed.status_code == 200, allowed.text  # the token was still there
        assert (await tenant.post("/v1/models/tiny-vit/predict", **PNG)).status_code == 429


async def test_the_rate_limit_answers_429_with_retry_after_and_headers_on_every_answer(
    gateway: Gateway,
) -> None:
    key = await _key(gateway, "acme", {"rate_limit_rps": 0.01})  # burst 1, and no refill in the test
    async with gateway.client(key) as tenant:
        allowed = await tenant.post("/v1/models/tiny-vit/predict", **PNG)
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["ratelimit-limit"] == "1" and allowed.headers["ratelimit-remaining"] == "0"
        assert int(allowed.headers["ratelimit-reset"]) > 0
        refused = await tenant.post("/v1/models/tiny-vit/predict", **PNG)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limited"
    assert 90 <= int(refused.headers["retry-after"]) <= 100  # one token at 0.01 a second
    assert refused.headers["ratelimit-remaining"] == "0"
    async with gateway.client() as admin:  # other tenants are not affected
        assert (await admin.post("/v1/models/tiny-vit/predict", **PNG)).status_code == 200
        assert 'maas_rate_limited_total{reason="rate"} 1.0' in (await admin.get("/metrics")).text


async def test_errors_after_admission_carry_the_rate_limit_headers(gateway: Gateway) -> None:
    key = await _key(gateway, "acme", rate_limit_rps=5)
    async with gateway.client(key) as tenant:
        bad = await tenant.post("/v1/models/tiny-vit/predict", content=b"junk", headers=PNG["headers"])
    assert bad.status_code == 422 and bad.headers["ratelimit-limit"] == "10"


async def test_a_spent_monthly_quota_answers_429_with_a_clear_message(gateway: Gateway) -> None:
    key = await _key(gateway, "acme", {"monthly_quota_inputs": 3})
    files = [("file", (f"{i}.png", image_bytes(), "image/png")) for i in range(3)]
    async with gateway.client(key) as tenant:
        assert (await tenant.post("/v1/models/tiny-vit/predict", files=files)).status_code == 200
        refused = await tenant.post("/v1/models/tiny-vit/predict", **PNG)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    message = refused.json()["error"]["message"]
    assert message.startswith("monthly quota of 3 inputs spent; resets on ") and message.endswith("-01")
    acme = gateway.app.state.gateway.tenants.get_tenant("acme")
    assert gateway.app.state.gateway.quota.used(acme.id) == 3  # the refused request was not counted


async def test_failed_requests_do_not_count_against_the_quota(gateway: Gateway) -> None:
    key = await _key(gateway, "acme", {"monthly_quota_inputs": 1})
    async with gateway.client(key) as tenant:
        bad = await tenant.post("/v1/models/tiny-vit/predict", content=b"junk", headers=PNG["headers"])
        assert bad.status_code == 422
        assert (await tenant.post("/v1/models/tiny-vit/predict", **PNG)).status_code == 200


async def test_a_tenant_over_its_in_flight_cap_gets_429(gateway: Gateway) -> None:
    key = await _key(gateway, "acme", {"max_concurrency": 1})
    caller = gateway.app.state.gateway.keys.verify(key)
    async with gateway.client(key) as tenant:
        async with gateway.app.state.gateway.limiter.concurrency(caller):  # one request of acme's in flight
            refused = await tenant.post("/v1/models/tiny-vit/predict", **PNG)
            assert refused.status_code == 429 and "in flight" in refused.json()["error"]["message"]
            assert refused.headers["retry-after"] == "1"
            async with gateway.client() as admin:  # another tenant is not held up
                assert (await admin.post("/v1/models/tiny-vit/predict", **PNG)).status_code == 200
        assert (await tenant.post("/v1/models/tiny-vit/predict", **PNG)).status_code == 200


@pytest.mark.parametrize("fail_open", [True, False])
async def test_an_unreachable_redis_fails_open_or_closed(settings: Settings, fail_open: bool) -> None:
    from service.app import create_app

    unreachable = {"redis_url": SecretStr("redis://127.0.0.1:1/0"), "redis_fail_open": fail_open}
    app = create_app(settings.model_copy(update=unreachable))
    async with app.router.lifespan_context(app):
        await app.state.gateway.registry.preload_done.wait()
        gateway = Gateway(app)
        key = await _key(gateway, "acme", {"rate_limit_rps": 1})
        async with gateway.client(key) as tenant:
            answer = await tenant.post("/v1/models/tiny-vit/predict", **PNG)
        if fail_open:
            assert answer.status_code == 200 and "ratelimit-limit" not in answer.headers
        else:
            assert answer.status_code == 503 and answer.json()["error"]["type"] == "unavailable"
            assert answer.headers["retry-after"] == "1"
        async with gateway.client() as admin:
            assert "maas_ratelimit_backend_errors_total 1.0" in (await admin.get("/metrics")).text
