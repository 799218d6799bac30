"""`/readyz` and `/metrics` need no key, so they never name a tenant or a tenant's fine-tuned model
(on SQLite and PostgreSQL); `MAAS_METRICS_TENANT_LABELS=true` labels both on `/metrics`."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.app import create_app
from service.settings import Settings
from tests.conftest import Gateway, image_bytes

pytestmark = pytest.mark.anyio
PRIVATE = "ft-tiny-vit-acme-secret-0badc0de"


async def acme_with_a_fine_tuned_model(gateway: Gateway, tiny_vit_dir: Path) -> tuple[str, str]:
    """(tenant id, key) of the tenant `acme`, owner of the fine-tuned model PRIVATE."""
    async with gateway.client() as admin:
        made = await admin.post("/v1/admin/tenants", json={"name": "acme"})
        key = (await admin.post("/v1/admin/tenants/acme/keys", json={})).json()["key"]
    tenant_id: str = made.json()["id"]
    gateway.app.state.gateway.registry.add_fine_tuned(PRIVATE, tiny_vit_dir, tenant_id, "tiny-vit")
    return tenant_id, key


async def predict_each(gateway: Gateway, key: str) -> None:
    """Two images on the private model, one on the public one, all billed to acme."""
    png = {"content": image_bytes(), "headers": {"Content-Type": "image/png"}}
    async with gateway.client(key) as acme:
        for model in (PRIVATE, PRIVATE, "tiny-vit"):
            assert (await acme.post(f"/v1/models/{model}/predict", **png)).status_code == 200
        assert PRIVATE in {m["id"] for m in (await acme.get("/v1/models")).json()["data"]}


async def test_public_endpoints_name_no_tenant_and_no_fine_tuned_model(
    gateway: Gateway, tiny_vit_dir: Path
) -> None:
    tenant_id, key = await acme_with_a_fine_tuned_model(gateway, tiny_vit_dir)
    await predict_each(gateway, key)
    async with gateway.client(key=None) as anyone:
        ready = await anyone.get("/readyz")
        metrics = (await anyone.get("/metrics")).text
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "models": {"tiny-vit": "ready", "missing": "unavailable"}}
    for public in (ready.text, metrics):
        assert PRIVATE not in public and tenant_id not in public and "acme" not in public
    assert "tenant=" not in metrics
    # the private model's requests are kept in the totals, under one label
    assert 'maas_requests_total{model="fine-tuned",status="200"} 2.0' in metrics
    assert 'maas_inputs_total{model="fine-tuned"} 2.0' in metrics
    assert 'maas_usage_inputs_total{model="fine-tuned"} 2.0' in metrics
    assert 'maas_usage_inputs_total{model="tiny-vit"} 1.0' in metrics
    assert 'maas_model_ready{model="fine-tuned"} 1.0' in metrics
    assert 'maas_batch_size_count{model="fine-tuned"} 2.0' in metrics
    assert 'maas_queue_depth{model="fine-tuned"} 0.0' in metrics


async def test_tenant_labels_name_tenants_and_their_models_when_asked(
    settings: Settings, database_url: str, tiny_vit_dir: Path
) -> None:
    labelled = settings.model_copy(update={"database_url": database_url, "metrics_tenant_labels": True})
    app = create_app(labelled)
    async with app.router.lifespan_context(app):
        await app.state.gateway.registry.preload_done.wait()
        gateway = Gateway(app)
        tenant_id, key = await acme_with_a_fine_tuned_model(gateway, tiny_vit_dir)
        await predict_each(gateway, key)
        async with gateway.client(key=None) as anyone:
            ready = (await anyone.get("/readyz")).json()
            metrics = (await anyone.get("/metrics")).text
    assert PRIVATE not in ready["models"]  # readiness never lists private models
    assert f'maas_inputs_total{{model="{PRIVATE}"}} 2.0' in metrics
    assert f'maas_usage_inputs_total{{model="{PRIVATE}",tenant="{tenant_id}"}} 2.0' in metrics
    assert f'maas_model_ready{{model="{PRIVATE}"}} 1.0' in metrics
    assert 'model="fine-tuned"' not in metrics
