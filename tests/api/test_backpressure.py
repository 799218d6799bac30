"""Backpressure and deadlines through the HTTP API: a full queue answers 503 with Retry-After, a
request whose deadline passes while it waits answers 504 and never reaches the model. The model
is held on an event, so what is queued when is decided by the test, not by timing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.api.conftest import Gate
from tests.conftest import ADMIN_KEY, image_bytes, write_manifest

pytestmark = pytest.mark.anyio
PREDICT = "/v1/models/held/predict"


@pytest.fixture
async def client(tmp_path: Path, tiny_vit_dir: Path, gate: Gate) -> AsyncIterator[httpx.AsyncClient]:
    async with held_model_client(
        tmp_path, tiny_vit_dir, gate, "max_batch_size: 4, max_delay_ms: 1, max_queue: 3"
    ) as http:
        yield http


@contextlib.asynccontextmanager
async def held_model_client(
    tmp_path: Path, tiny_vit_dir: Path, gate: Gate, batching: str
) -> AsyncIterator[httpx.AsyncClient]:
    """An admin client of a gateway serving the held model `held` with these `batching` settings."""
    models = tmp_path / "models"
    models.mkdir()
    write_manifest(
        models,
        "held",
        f"""
        name: held
        task: image-classification
        source: {tiny_vit_dir}
        batching: {{{batching}}}
    """,
    )
    settings = Settings(models_dir=models, data_dir=tmp_path / "var", admin_key=ADMIN_KEY, devices="cpu")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.gateway.registry.preload_done.wait()
        gate.batches.clear()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ) as http:
            yield http


def files(count: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"{i}.png", image_bytes(), "image/png")) for i in range(count)]


async def hold_the_model(client: httpx.AsyncClient, gate: Gate, inputs: int) -> asyncio.Task[httpx.Response]:
    """Send a request and return once its batch is on the (held) model."""
    return await gate.first(client, PREDICT, files=files(inputs))


async def test_a_full_queue_answers_503_overloaded_with_retry_after(
    client: httpx.AsyncClient, gate: Gate
) -> None:
    first = await hold_the_model(client, gate, inputs=2)
    refused = await client.post(PREDICT, files=files(2))  # 2 running + 2 > max_queue 3
    assert refused.status_code == 503
    assert refused.json()["error"]["type"] == "overloaded"
    assert int(refused.headers["retry-after"]) >= 1
    fits = asyncio.create_task(client.post(PREDICT, files=files(1)))  # 2 + 1 fits
    gate.open.set()
    assert (await first).status_code == 200 and (await fits).status_code == 200
    assert [len(batch) for batch in gate.batches] == [2, 1]  # the refused inputs never reached the model


async def test_a_request_whose_deadline_passes_in_the_queue_gets_504_and_skips_the_model(
    client: httpx.AsyncClient, gate: Gate
) -> None:
    first = await hold_the_model(client, gate, inputs=1)
    late = await client.post(PREDICT, files=files(1), headers={"X-Request-Timeout-Ms": "20"})
    assert late.status_code == 504 and late.json()["error"]["type"] == "timeout"
    gate.open.set()
    assert (await first).status_code == 200
    after = await client.post(PREDICT, files=files(1))  # queued behind the dropped one
    assert after.status_code == 200
    assert [len(batch) for batch in gate.batches] == [1, 1]
    metrics = (await client.get("/metrics")).text
    assert 'maas_dropped_inputs_total{model="held",reason="cancelled"} 1.0' in metrics
    assert 'maas_requests_total{model="held",status="504"} 1.0' in metrics


@pytest.mark.parametrize("value", ["abc", "0", "-5", "99999999999"])
async def test_a_bad_timeout_header_is_422(client: httpx.AsyncClient, value: str) -> None:
    response = await client.post(PREDICT, files=files(1), headers={"X-Request-Timeout-Ms": value})
    assert response.status_code == 422
    assert "X-Request-Timeout-Ms" in response.json()["error"]["message"]


async def test_queue_depth_and_device_memory_are_exported(client: httpx.AsyncClient, gate: Gate) -> None:
    first = await hold_the_model(client, gate, inputs=1)
    queued = asyncio.create_task(client.post(PREDICT, files=files(2)))
    while 'maas_queue_depth{model="held"} 2.0' not in (metrics := (await client.get("/metrics")).text):
        await asyncio.sleep(0)  # let the second request reach the queue; no wall-clock wait
    assert 'maas_device_memory_bytes{device="cpu"}' in metrics
    gate.open.set()
    assert (await first).status_code == 200 and (await queued).status_code == 200
