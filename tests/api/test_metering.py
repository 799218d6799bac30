"""Usage events through the HTTP API: one per answered request, written before the answer, and
Idempotency-Key retries answered once and billed once. The model is held on an event where a
test needs a request to be in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.db.models import UsageEvent
from service.settings import Settings
from tests.api.conftest import Gate
from tests.conftest import ADMIN_KEY, image_bytes

pytestmark = pytest.mark.anyio
PREDICT = "/v1/models/tiny-vit/predict"


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.gateway.registry.preload_done.wait()
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gateway",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ) as http:
        yield http


def events(app: FastAPI) -> list[UsageEvent]:
    sessions: sessionmaker[Session] = app.state.gateway.sessions
    with sessions() as session:
        return list(session.scalars(select(UsageEvent).order_by(UsageEvent.created_at)))


def png(color: tuple[int, int, int] = (200, 30, 30)) -> dict[str, Any]:
    return {"content": image_bytes(color=color), "headers": {"Content-Type": "image/png"}}


async def test_every_answer_has_exactly_one_event_with_its_status(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    ok = [await client.post(PREDICT, **png()) for _ in range(3)]
    several = await client.post(
        PREDICT, files=[("file", (f"{i}.png", image_bytes(), "image/png")) for i in range(3)]
    )
    bad = await client.post(PREDICT, content=b"not an image", headers={"Content-Type": "image/png"})
    unknown = await client.post("/v1/models/nope/predict", **png())
    unavailable = await client.post("/v1/models/missing/predict", **png())
    answered = [*ok, several, bad, unknown, unavailable]
    assert [r.status_code for r in answered] == [200, 200, 200, 200, 422, 404, 503]
    by_id = {e.request_id: e for e in events(app)}
    assert len(by_id) == len(answered) == len(events(app))
    for response in answered:
        event = by_id[response.headers["x-request-id"]]
        assert event.status == response.status_code
    first = by_id[ok[0].headers["x-request-id"]]
    assert (first.model, first.inputs, first.per_input_micro, first.amount_micro) == (
        "tiny-vit",
        1,
        1000,
        1000,
    )
    assert first.compute_us > 0 and first.key_id and first.tenant_id
    assert by_id[several.headers["x-request-id"]].amount_micro == 3000
    assert all(by_id[r.headers["x-request-id"]].amount_micro == 0 for r in (bad, unknown, unavailable))
    assert ok[0].json()["usage"]["cost_micro"] == 1000
    metrics = (await client.get("/metrics")).text
    assert 'maas_usage_events_total{status="200"} 4.0' in metrics
    # billed inputs by model (tenants only with MAAS_METRICS_TENANT_LABELS): 3 single images + 3
    assert 'maas_usage_inputs_total{model="tiny-vit"} 6.0' in metrics and first.tenant_id not in metrics
    assert "maas_usage_write_seconds_count" in metrics and "maas_usage_group_size_bucket" in metrics


async def test_unauthenticated_requests_are_not_billed(app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await client.post(PREDICT, headers={"Authorization": "Bearer mk_wrong"}, content=b"x")
    assert response.status_code == 401
    assert events(app) == []


async def test_sequential_retries_replay_the_first_answer_and_are_billed_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    headers = {"Content-Type": "image/png", "Idempotency-Key": "order-1"}
    body = image_bytes()
    first = await client.post(PREDICT, content=body, headers=headers)
    again = [await client.post(PREDICT, content=body, headers=headers) for _ in range(3)]
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    for retry in again:
        assert retry.status_code == 200 and retry.content == first.content
        assert retry.headers["x-request-id"] == first.headers["x-request-id"] == first.json()["id"]
        assert retry.headers["idempotent-replayed"] == "true"
    assert [e.request_id for e in events(app)] == [first.json()["id"]]
    other = await client.post(PREDICT, content=body, headers={**headers, "Idempotency-Key": "order-2"})
    assert other.json()["id"] != first.json()["id"] and len(events(app)) == 2
    metrics = (await client.get("/metrics")).text
    assert 'maas_idempotent_replays_total{outcome="replayed"} 3.0' in metrics


async def test_a_multipart_retry_with_a_new_boundary_is_replayed(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    files = [("file", ("a.png", image_bytes(), "image/png")), ("file", ("b.png", image_bytes(), "image/png"))]
    headers = {"Idempotency-Key": "multipart-1"}
    first = await client.post(PREDICT, files=files, headers=headers)  # httpx draws a new boundary
    again = await client.post(PREDICT, files=files, headers=headers)  # for every request
    assert first.request.headers["content-type"] != again.request.headers["content-type"]
    assert first.status_code == again.status_code == 200 and again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert [e.request_id for e in events(app)] == [first.json()["id"]]


async def test_concurrent_retries_are_run_and_billed_once(app: FastAPI, client: httpx.AsyncClient) -> None:
    headers = {"Content-Type": "image/png", "Idempotency-Key": "burst"}
    body = image_bytes()
    answers = await asyncio.gather(*(client.post(PREDICT, content=body, headers=headers) for _ in range(8)))
    assert {r.status_code for r in answers} <= {200, 409}
    ok = [r for r in answers if r.status_code == 200]
    assert ok and len({r.content for r in ok}) == 1 and len({r.headers["x-request-id"] for r in ok}) == 1
    assert len(events(app)) == 1
    late = await client.post(PREDICT, content=body, headers=headers)
    assert late.status_code == 200 and late.content == ok[0].content and len(events(app)) == 1


async def test_the_same_key_with_another_body_is_422(app: FastAPI, client: httpx.AsyncClient) -> None:
    headers = {"Content-Type": "image/png", "Idempotency-Key": "k"}
    assert (await client.post(PREDICT, content=image_bytes(), headers=headers)).status_code == 200
    other = await client.post(PREDICT, content=image_bytes(color=(0, 0, 255)), headers=headers)
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["error"]["message"]
    top_k = await client.post(PREDICT + "?top_k=1", content=image_bytes(), headers=headers)
    assert top_k.status_code == 422
    assert len(events(app)) == 1


async def test_a_retry_while_the_first_runs_is_409(
    app: FastAPI, client: httpx.AsyncClient, gate: Gate
) -> None:
    headers = {"Content-Type": "image/png", "Idempotency-Key": "slow"}
    body = image_bytes()
    first = await gate.first(client, PREDICT, content=body, headers=headers)
    retry = await client.post(PREDICT, content=body, headers=headers)
    assert retry.status_code == 409 and retry.json()["error"]["type"] == "conflict"
    assert 'maas_idempotent_replays_total{outcome="running"} 1.0' in (await client.get("/metrics")).text
    gate.open.set()
    done = await first
    assert done.status_code == 200
    replay = await client.post(PREDICT, content=body, headers=headers)
    assert replay.content == done.content and len(events(app)) == 1


async def test_a_client_error_is_replayed_and_a_server_error_frees_the_key(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    bad = {"content": b"not an image", "headers": {"Content-Type": "image/png", "Idempotency-Key": "bad"}}
    first, second = await client.post(PREDICT, **bad), await client.post(PREDICT, **bad)
    assert first.status_code == second.status_code == 422 and first.content == second.content
    assert second.headers["x-request-id"] == first.headers["x-request-id"]
    down = {"content": image_bytes(), "headers": {"Content-Type": "image/png", "Idempotency-Key": "down"}}
    one = await client.post("/v1/models/missing/predict", **down)
    two = await client.post("/v1/models/missing/predict", **down)
    assert one.status_code == two.status_code == 503
    assert one.headers["x-request-id"] != two.headers["x-request-id"]  # it ran again
    assert sorted(e.status for e in events(app)) == [422, 503, 503]


async def test_metering_off_records_nothing(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"metering": False}))
    async with app.router.lifespan_context(app):
        await app.state.gateway.registry.preload_done.wait()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gateway",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        ) as http:
            response = await http.post(PREDICT, **png())
            assert response.status_code == 200 and response.json()["usage"] == {"inputs": 1}
        assert events(app) == []
