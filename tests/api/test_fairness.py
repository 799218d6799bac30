"""Fair sharing through the HTTP API: a tenant's weight is checked and kept, X-Service-Class picks
the class (422 for anything else), and a tenant flooding a model gets its own 503 while another
tenant is still admitted. The model is held on an event (test_backpressure's gate), so what is
queued when is decided by the test, not by timing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import Gate
from tests.api.test_backpressure import files, held_model_client, hold_the_model

pytestmark = pytest.mark.anyio
PREDICT = "/v1/models/held/predict"


@pytest.fixture
async def client(tmp_path: Path, tiny_vit_dir: Path, gate: Gate) -> AsyncIterator[httpx.AsyncClient]:
    batching = "max_batch_size: 1, max_delay_ms: 1, max_queue: 20, max_queue_per_tenant: 2"
    async with held_model_client(tmp_path, tiny_vit_dir, gate, batching) as http:
        yield http


async def key_of(client: httpx.AsyncClient, tenant: str, **fields: float) -> dict[str, str]:
    assert (await client.post("/v1/admin/tenants", json={"name": tenant, **fields})).status_code == 201
    made = await client.post(f"/v1/admin/tenants/{tenant}/keys", json={})
    return {"Authorization": f"Bearer {made.json()['key']}"}


@pytest.mark.parametrize("weight", [0, 0.001, 1000.5, -1, "heavy"])
async def test_a_weight_out_of_range_is_422(client: httpx.AsyncClient, weight: object) -> None:
    refused = await client.post("/v1/admin/tenants", json={"name": "acme", "weight": weight})
    assert refused.status_code == 422 and refused.json()["error"]["type"] == "invalid_input"
    assert "weight" in refused.json()["error"]["message"]


async def test_a_weight_is_kept_changed_and_cleared(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v1/admin/tenants", json={"name": "plain"})).json()["weight"] == 1.0
    made = await client.post("/v1/admin/tenants", json={"name": "acme", "weight": 3})
    assert made.status_code == 201 and made.json()["weight"] == 3.0
    changed = await client.patch("/v1/admin/tenants/acme", json={"weight": 0.25})
    assert changed.json()["weight"] == 0.25
    refused = await client.patch("/v1/admin/tenants/acme", json={"weight": 5000})
    assert refused.status_code == 422
    assert (await client.patch("/v1/admin/tenants/acme", json={"weight": None})).json()["weight"] == 1.0
    assert (await client.get("/v1/admin/tenants/acme")).json()["weight"] == 1.0


async def test_the_service_class_header_is_checked_and_counted(client: httpx.AsyncClient) -> None:
    refused = await client.post(PREDICT, files=files(1), headers={"X-Service-Class": "urgent"})
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["type"] == "invalid_input" and "X-Service-Class" in error["message"] and error["request_id"]
    assert (
        await client.post(PREDICT, files=files(2), headers={"X-Service-Class": "batch"})
    ).status_code == 200
    assert (await client.post(PREDICT, files=files(1))).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'maas_class_inputs_total{class="batch"} 2.0' in metrics
    assert 'maas_class_inputs_total{class="interactive"} 1.0' in metrics
    assert 'maas_class_queue_wait_seconds_count{class="batch"} 2.0' in metrics
    assert 'maas_class_queue_depth{class="interactive"} 0.0' in metrics
    assert "tenant" not in "".join(line for line in metrics.splitlines() if "maas_class_" in line)


async def test_a_flooding_tenant_gets_its_own_503_while_another_is_admitted(
    client: httpx.AsyncClient,
    gate: Gate,
) -> None:
    flood, light = await key_of(client, "flood"), await key_of(client, "light")
    client.headers.update(flood)
    first = await hold_the_model(client, gate, inputs=1)  # on the device
    queued = [asyncio.create_task(client.post(PREDICT, files=files(1), headers=flood)) for _ in range(2)]
    while 'maas_class_queue_depth{class="interactive"} 2.0' not in (await client.get("/metrics")).text:
        await asyncio.sleep(0)  # let both reach the queue; no wall-clock wait
    refused = await client.post(PREDICT, files=files(1), headers=flood)  # its own bound: 2 waiting
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "overloaded"
    assert "tenant" in refused.json()["error"]["message"] and int(refused.headers["retry-after"]) >= 1
    admitted = asyncio.create_task(client.post(PREDICT, files=files(1), headers=light))
    while 'maas_class_queue_depth{class="interactive"} 3.0' not in (await client.get("/metrics")).text:
        await asyncio.sleep(0)
    gate.open.set()
    assert (await admitted).status_code == 200
    assert [(await t).status_code for t in (first, *queued)] == [200, 200, 200]
    assert [len(batch) for batch in gate.batches] == [1, 1, 1, 1]  # the refused input never reached the model
