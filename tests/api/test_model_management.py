"""Models registered at run time (`/v1/admin/models`), on SQLite and PostgreSQL: register -> ready
-> served; bad manifests; weights that cannot load; patch, unload, load, delete (draining what is
in flight); registrations kept across restarts and converging on a second replica, with Redis at
once and without it by the periodic sync."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from service.api import schemas
from service.app import create_app
from service.serving.runtime.transformers_adapter import ImageClassificationAdapter
from service.settings import Settings
from tests.api.conftest import Gate
from tests.api.jobs import tenant_key
from tests.api.test_openapi import fields_match
from tests.conftest import TINY_LABELS, Gateway, image_bytes, redis_url_or_skip

pytestmark = pytest.mark.anyio

DEADLINE_S = 60


def manifest(source: Path, name: str = "extra-vit", **fields: Any) -> dict[str, Any]:
    return {"name": name, "task": "image-classification", "source": str(source), **fields}


async def wait_status(http: httpx.AsyncClient, model: str, statuses: set[str]) -> dict[str, Any]:
    """Poll the model's detail until its status is one of `statuses` (fails at the deadline)."""
    deadline = time.monotonic() + DEADLINE_S
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = await http.get(f"/v1/models/{model}")
        seen = answer.json()
        if answer.status_code == 200 and seen["status"] in statuses:
            return seen
        await asyncio.sleep(0.05)  # a poll interval, not a timing assumption
    raise AssertionError(f"model {model} never reached {statuses}: {seen}")


async def wait_gone(http: httpx.AsyncClient, model: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if (await http.get(f"/v1/models/{model}")).status_code == 404:
            return
        await asyncio.sleep(0.05)  # a poll interval, not a timing assumption
    raise AssertionError(f"model {model} still listed")


async def predict(http: httpx.AsyncClient, model: str) -> httpx.Response:
    return await http.post(
        f"/v1/models/{model}/predict", content=image_bytes(), headers={"Content-Type": "image/png"}
    )


@asynccontextmanager
async def replicas(settings: Settings, count: int, **changes: Any) -> AsyncIterator[list[Gateway]]:
    """`count` gateways in this process on the same database (as pods sharing it)."""
    apps = [create_app(settings.model_copy(update=changes)) for _ in range(count)]
    async with AsyncExitStack() as running:
        for app in apps:
            await running.enter_async_context(app.router.lifespan_context(app))
            await app.state.gateway.registry.preload_done.wait()
        yield [Gateway(app) for app in apps]


async def test_a_registered_model_loads_in_the_background_then_serves(
    gateway: Gateway, tiny_vit_dir: Path
) -> None:
    async with gateway.client() as admin:
        made = await admin.post("/v1/admin/models", json=manifest(tiny_vit_dir, price={"per_image": 0.002}))
        assert made.status_code == 201, made.text
        assert made.json()["id"] == "extra-vit" and made.json()["status"] == "loading"
        fields_match(schemas.ModelInfo, made.json())
        ready = await wait_status(admin, "extra-vit", {"ready", "unavailable"})
        assert ready["status"] == "ready", ready
        answer = await predict(admin, "extra-vit")
        assert answer.status_code == 200, answer.text
        assert {p["label"] for p in answer.json()["predictions"][0]} == set(TINY_LABELS)
        listed = {m["id"]: m["status"] for m in (await admin.get("/v1/models")).json()["data"]}
        assert listed["extra-vit"] == "ready" and listed["tiny-vit"] == "ready"
        again = await admin.post("/v1/admin/models", json=manifest(tiny_vit_dir))
        assert again.status_code == 409, again.text


async def test_a_folder_models_name_cannot_be_registered_nor_managed(
    gateway: Gateway, tiny_vit_dir: Path
) -> None:
    async with gateway.client() as admin:
        taken = await admin.post("/v1/admin/models", json=manifest(tiny_vit_dir, name="tiny-vit"))
        assert taken.status_code == 409 and "tiny-vit" in taken.json()["error"]["message"]
        for answer in (
            await admin.patch("/v1/admin/models/tiny-vit", json={"replicas": 2}),
            await admin.delete("/v1/admin/models/tiny-vit"),
            await admin.post("/v1/admin/models/tiny-vit/unload"),
        ):
            assert answer.status_code == 409, answer.text
        assert (await admin.delete("/v1/admin/models/no-such-model")).status_code == 404
        assert (await predict(admin, "tiny-vit")).status_code == 200


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"replicas": 0}, "replicas"),
        ({"batching": {"max_batch_size": 0}}, "max_batch_size"),
        ({"colour": "red"}, "colour"),
        ({"name": "Not A Name!"}, "name"),
        ({"task": "poetry"}, "task"),
    ],
)
async def test_a_bad_manifest_is_refused_naming_the_field(
    client: httpx.AsyncClient, tiny_vit_dir: Path, fields: dict[str, Any], named: str
) -> None:
    answer = await client.post("/v1/admin/models", json=manifest(tiny_vit_dir, **fields))
    assert answer.status_code == 422, answer.text
    assert named in answer.json()["error"]["message"]
    missing = await client.post(
        "/v1/admin/models", json={"name": "no-source", "task": "image-classification"}
    )
    assert missing.status_code == 422 and "source" in missing.json()["error"]["message"]
    listed = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
    assert "extra-vit" not in listed and "no-source" not in listed


async def test_weights_that_cannot_load_leave_the_model_unavailable_with_the_reason(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-vit"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "vit", "hidden_size": ', encoding="utf-8")
    made = await client.post("/v1/admin/models", json=manifest(broken))
    assert made.status_code == 201, made.text
    failed = await wait_status(client, "extra-vit", {"ready", "unavailable"})
    assert failed["status"] == "unavailable" and failed["reason"], failed
    answer = await predict(client, "extra-vit")
    assert answer.status_code == 503 and "unavailable" in answer.json()["error"]["message"]
    assert (await predict(client, "tiny-vit")).status_code == 200  # the gateway serves on


async def test_patch_unload_load_and_delete(gateway: Gateway, tiny_vit_dir: Path) -> None:
    async with gateway.client() as admin:
        assert (await admin.post("/v1/admin/models", json=manifest(tiny_vit_dir))).status_code == 201
        await wait_status(admin, "extra-vit", {"ready"})

        priced = await admin.patch("/v1/admin/models/extra-vit", json={"price": {"per_image": 0.5}})
        assert priced.status_code == 200 and priced.json()["status"] == "ready"  # no reload for a price
        prices = gateway.app.state.gateway.meter.prices
        assert prices.current("extra-vit").per_input_micro == 500_000
        bad = await admin.patch("/v1/admin/models/extra-vit", json={"replicas": 100})
        assert bad.status_code == 422 and "replicas" in bad.json()["error"]["message"]

        rebatched = await admin.patch("/v1/admin/models/extra-vit", json={"batching": {"max_batch_size": 3}})
        assert rebatched.status_code == 200, rebatched.text
        ready = await wait_status(admin, "extra-vit", {"ready"})
        assert ready["batching"]["max_batch_size"] == 3
        assert (await predict(admin, "extra-vit")).status_code == 200

        unloaded = await admin.post("/v1/admin/models/extra-vit/unload")
        assert unloaded.status_code == 200 and unloaded.json()["status"] == "unloaded"
        assert unloaded.json()["devices"] == []
        loaded = await admin.post("/v1/admin/models/extra-vit/load")
        assert loaded.status_code == 200 and loaded.json()["status"] == "loading"
        await wait_status(admin, "extra-vit", {"ready"})
        assert (await predict(admin, "extra-vit")).status_code == 200
        # unloaded, it loads again on its next use (and the sync leaves it so)
        assert (await admin.post("/v1/admin/models/extra-vit/unload")).json()["status"] == "unloaded"
        assert (await predict(admin, "extra-vit")).status_code == 200
        await gateway.app.state.gateway.model_sync.sync()
        assert (await admin.get("/v1/models/extra-vit")).json()["status"] == "ready"

        deleted = await admin.delete("/v1/admin/models/extra-vit")
        assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
        assert (await predict(admin, "extra-vit")).status_code == 404
        assert (await admin.get("/v1/models/extra-vit")).status_code == 404
        assert (await admin.delete("/v1/admin/models/extra-vit")).status_code == 404
        # the name is free again
        assert (await admin.post("/v1/admin/models", json=manifest(tiny_vit_dir))).status_code == 201


async def test_delete_answers_the_requests_in_flight_first(
    client: httpx.AsyncClient, tiny_vit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await client.post("/v1/admin/models", json=manifest(tiny_vit_dir))).status_code == 201
    await wait_status(client, "extra-vit", {"ready"})
    gate = Gate()
    gate.hold(ImageClassificationAdapter, monkeypatch)
    gate.open.clear()
    in_flight = asyncio.create_task(predict(client, "extra-vit"))
    await asyncio.to_thread(gate.entered.wait, 30)  # the request is on the model
    deleting = asyncio.create_task(client.delete("/v1/admin/models/extra-vit"))
    await wait_gone(client, "extra-vit")  # no longer listed while it drains
    assert not in_flight.done()
    gate.open.set()
    answer = await in_flight
    assert answer.status_code == 200, answer.text
    assert (await deleting).status_code == 200
    assert (await predict(client, "extra-vit")).status_code == 404


async def test_tenant_keys_may_not_manage_models(gateway: Gateway, tiny_vit_dir: Path) -> None:
    async with gateway.client() as admin:
        key = await tenant_key(admin, "acme")
    async with gateway.client(key) as tenant:
        for answer in (
            await tenant.post("/v1/admin/models", json=manifest(tiny_vit_dir)),
            await tenant.patch("/v1/admin/models/tiny-vit", json={"replicas": 2}),
            await tenant.delete("/v1/admin/models/tiny-vit"),
            await tenant.post("/v1/admin/models/tiny-vit/load"),
            await tenant.post("/v1/admin/models/tiny-vit/unload"),
        ):
            assert answer.status_code == 403, answer.text
        assert "extra-vit" not in {m["id"] for m in (await tenant.get("/v1/models")).json()["data"]}


async def test_a_restart_keeps_the_registrations(
    settings: Settings, database_url: str, tiny_vit_dir: Path
) -> None:
    async with replicas(settings, 1, database_url=database_url) as [first], first.client() as admin:
        assert (await admin.post("/v1/admin/models", json=manifest(tiny_vit_dir))).status_code == 201
        kept = manifest(tiny_vit_dir, name="kept-unloaded")
        assert (await admin.post("/v1/admin/models", json=kept)).status_code == 201
        await wait_status(admin, "kept-unloaded", {"ready"})
        assert (await admin.post("/v1/admin/models/kept-unloaded/unload")).status_code == 200
    async with replicas(settings, 1, database_url=database_url) as [again], again.client() as admin:
        ready = await wait_status(admin, "extra-vit", {"ready", "unavailable"})
        assert ready["status"] == "ready", ready
        assert (await predict(admin, "extra-vit")).status_code == 200
        assert (await admin.get("/v1/models/kept-unloaded")).json()["status"] == "unloaded"


async def test_replicas_converge_by_the_periodic_sync(
    settings: Settings, database_url: str, tiny_vit_dir: Path
) -> None:
    async with replicas(settings, 2, database_url=database_url, model_sync_s=0.2, redis_url=None) as [a, b]:
        await converge(a, b, tiny_vit_dir)


async def test_replicas_converge_at_once_over_redis(
    settings: Settings, database_url: str, tiny_vit_dir: Path
) -> None:
    # the periodic sync is an hour away: only the Redis message can bring the change in time
    shared = {"database_url": database_url, "model_sync_s": 3600, "redis_url": SecretStr(redis_url_or_skip())}
    async with replicas(settings, 2, **shared) as [a, b]:
        assert all(g.app.state.gateway.model_changes.subscribed for g in (a, b))
        await converge(a, b, tiny_vit_dir)


async def converge(a: Gateway, b: Gateway, tiny_vit_dir: Path) -> None:
    """Register, change, unload and delete on `a`; `b` follows each step."""
    async with a.client() as on_a, b.client() as on_b:
        assert (await on_b.get("/v1/models/extra-vit")).status_code == 404
        assert (await on_a.post("/v1/admin/models", json=manifest(tiny_vit_dir))).status_code == 201
        await wait_status(on_b, "extra-vit", {"ready"})
        assert (await predict(on_b, "extra-vit")).status_code == 200
        assert (await on_a.patch("/v1/admin/models/extra-vit", json={"description": "v2"})).status_code == 200
        deadline = time.monotonic() + DEADLINE_S
        while (await on_b.get("/v1/models/extra-vit")).json()["description"] != "v2":
            assert time.monotonic() < deadline, "the change never reached the second replica"
            await asyncio.sleep(0.05)  # a poll interval, not a timing assumption
        assert (await on_a.post("/v1/admin/models/extra-vit/unload")).status_code == 200
        await wait_status(on_b, "extra-vit", {"unloaded"})
        assert (await on_a.delete("/v1/admin/models/extra-vit")).status_code == 200
        await wait_gone(on_b, "extra-vit")
        assert (await predict(on_b, "extra-vit")).status_code == 404


async def test_two_replicas_registering_one_name_at_once_make_one_model(
    settings: Settings, database_url: str, tiny_vit_dir: Path
) -> None:
    shared = {"database_url": database_url, "model_sync_s": 0.2, "redis_url": None}
    async with replicas(settings, 2, **shared) as [a, b], a.client() as on_a, b.client() as on_b:
        answers = await asyncio.gather(
            on_a.post("/v1/admin/models", json=manifest(tiny_vit_dir)),
            on_b.post("/v1/admin/models", json=manifest(tiny_vit_dir)),
        )
        assert sorted(r.status_code for r in answers) == [201, 409], [r.text for r in answers]
        for http in (on_a, on_b):
            assert (await wait_status(http, "extra-vit", {"ready"}))["status"] == "ready"
