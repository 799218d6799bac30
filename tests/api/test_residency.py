"""Memory-aware residency under a tiny budget (MAAS_DEVICE_MEMORY_MB fits two tiny ViTs), with an
injected clock: models load on first use, the least recently used idle model is evicted (never a
pinned one, nor one with a request in flight), 503 naming the setting when nothing can be
evicted, concurrent requests share one load, a deadline passing during a load answers 504 while
the load goes on, a batch job keeps its model resident, and the loads and evictions are counted
in /metrics."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.serving.entries import ModelEntry
from service.serving.manifests import ModelManifest
from service.serving.residency import MB
from service.serving.runtime.base import ModelAdapter, Output
from service.serving.runtime.transformers_adapter import ImageClassificationAdapter
from service.serving.sizing import estimate_bytes
from service.settings import Settings
from tests.api.test_fine_tuning import metric_samples
from tests.api.test_model_management import wait_status
from tests.conftest import ADMIN_KEY, TINY_LABELS, image_bytes, write_manifest

pytestmark = pytest.mark.anyio

MODELS = ("m0", "m1", "m2", "m3")
FITS = 2.5  # the budget, in tiny ViTs: two fit, a third does not


class Clock:
    """The residency's clock: the monotonic clock, moved forward by the test."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skew

    def advance(self, seconds: float) -> None:
        self.skew += seconds


def vit_bytes(tiny_vit_dir: Path) -> int:
    manifest = ModelManifest(name="m", task="image-classification", source=str(tiny_vit_dir))
    size = estimate_bytes(manifest, tiny_vit_dir)
    assert size
    return size


def residency_settings(tmp_path: Path, tiny_vit_dir: Path, **extra: str) -> Settings:
    """Four copies of the tiny ViT (not preloaded unless `extra` says) under a budget fitting two;
    `extra` adds manifest lines per model (`{"m0": "pinned: true"}`)."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in MODELS:
        lines = [f"name: {name}", "task: image-classification", f"source: {tiny_vit_dir}"]
        lines.append(extra.get(name, "preload: false"))
        write_manifest(folder, name, "\n".join(lines) + "\n")
    return Settings(
        models_dir=folder,
        data_dir=tmp_path / "var",
        admin_key=ADMIN_KEY,
        devices="cpu",
        device_memory_mb=FITS * vit_bytes(tiny_vit_dir) / MB,
    )


@contextlib.asynccontextmanager
async def residency_gateway(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, Clock]]:
    app = create_app(settings)
    clock = Clock()
    async with app.router.lifespan_context(app):
        await app.state.gateway.registry.preload_done.wait()
        app.state.gateway.registry.residency.clock = clock
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", headers=headers) as http:
            yield app, http, clock


@contextlib.asynccontextmanager
async def oldest_held(
    tmp_path: Path, tiny_vit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, Clock, Held]]:
    """A gateway whose m0 was used first (the least recently used) and whose forward passes
    are held until the gate opens (at the latest when the test ends)."""
    async with residency_gateway(residency_settings(tmp_path, tiny_vit_dir)) as (app, http, clock):
        await use(http, clock, "m0")
        gate = Held(entry(app, "m0").adapter, monkeypatch)
        try:
            yield app, http, clock, gate
        finally:
            gate.open.set()


def entry(app: FastAPI, name: str) -> ModelEntry:
    found: ModelEntry = app.state.gateway.registry.entries[name]
    return found


async def predict(http: httpx.AsyncClient, model: str) -> httpx.Response:
    return await http.post(
        f"/v1/models/{model}/predict", content=image_bytes(), headers={"Content-Type": "image/png"}
    )


async def use(http: httpx.AsyncClient, clock: Clock, *models: str) -> None:
    """Predict with each of `models` in turn, a second apart on the residency clock."""
    for model in models:
        clock.advance(1)
        answer = await predict(http, model)
        assert answer.status_code == 200, answer.text
        assert {p["label"] for p in answer.json()["predictions"][0]} == set(TINY_LABELS)


async def loads(http: httpx.AsyncClient, model: str) -> float:
    """`maas_model_loads_total` of `model`, as scraped."""
    scraped = metric_samples((await http.get("/metrics")).text)
    return scraped[("maas_model_loads_total", (("model", model),))]


async def statuses(http: httpx.AsyncClient) -> dict[str, str]:
    listed = (await http.get("/v1/models")).json()["data"]
    return {m["id"]: m["status"] for m in listed}


class Held:
    """Holds the forward passes of one loaded model (by its adapter) until opened."""

    def __init__(self, adapter: ModelAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open, self.entered = threading.Event(), threading.Event()
        predict = ImageClassificationAdapter.predict
        gate = self

        def held(self: ImageClassificationAdapter, features: list[Any], *, top_k: int) -> list[Output]:
            if self is adapter:
                gate.entered.set()
                gate.open.wait(timeout=30)
            return predict(self, features, top_k=top_k)

        monkeypatch.setattr(ImageClassificationAdapter, "predict", held)


@contextlib.contextmanager
def held_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Holds every tiny ViT load at its warm-up until the first event is set; the second is set
    once a load is held."""
    release, entered = threading.Event(), threading.Event()
    warmup = ImageClassificationAdapter.warmup

    def held(self: ImageClassificationAdapter) -> None:
        entered.set()
        release.wait(timeout=30)
        warmup(self)

    monkeypatch.setattr(ImageClassificationAdapter, "warmup", held)
    try:
        yield release, entered
    finally:
        release.set()


async def test_models_load_on_first_use_and_the_least_recently_used_is_evicted(
    tmp_path: Path, tiny_vit_dir: Path
) -> None:
    size = vit_bytes(tiny_vit_dir)
    async with residency_gateway(residency_settings(tmp_path, tiny_vit_dir)) as (app, http, clock):
        assert set((await statuses(http)).values()) == {"not_loaded"}
        await use(http, clock, "m0", "m1", "m0")  # m1 is now the least recently used
        await use(http, clock, "m2")
        listed = await statuses(http)
        assert (listed["m0"], listed["m1"], listed["m2"]) == ("ready", "unloaded", "ready")
        evicted = (await http.get("/v1/models/m1")).json()
        assert "evicted for memory" in evicted["reason"] and "next use" in evicted["reason"]
        assert evicted["devices"] == [] and evicted["load_seconds"] is None
        assert (await http.get("/v1/models/m2")).json()["load_seconds"] > 0

        await use(http, clock, "m1")  # back on its next use, evicting m0 (used before m2)
        listed = await statuses(http)
        assert (listed["m0"], listed["m1"], listed["m2"]) == ("unloaded", "ready", "ready")

        scraped = metric_samples((await http.get("/metrics")).text)
        assert scraped[("maas_model_loads_total", (("model", "m1"),))] == 2
        assert scraped[("maas_model_loads_total", (("model", "m0"),))] == 1
        assert scraped[("maas_model_evictions_total", (("model", "m1"),))] == 1
        assert scraped[("maas_model_evictions_total", (("model", "m0"),))] == 1
        assert scraped[("maas_model_load_duration_seconds_count", (("model", "m1"),))] == 2
        assert scraped[("maas_resident_models", (("device", "cpu"),))] == 2
        assert scraped[("maas_resident_bytes", (("device", "cpu"),))] == 2 * size
        assert entry(app, "m3").status == "not_loaded"


async def test_preload_stops_at_the_budget_without_evicting(tmp_path: Path, tiny_vit_dir: Path) -> None:
    preload = {name: "preload: true" for name in MODELS}
    async with residency_gateway(residency_settings(tmp_path, tiny_vit_dir, **preload)) as (_, http, clock):
        listed = await statuses(http)
        assert sorted(listed[m] for m in MODELS) == ["not_loaded", "not_loaded", "ready", "ready"]
        waiting = next(m for m in MODELS if listed[m] == "not_loaded")
        reason = (await http.get(f"/v1/models/{waiting}")).json()["reason"]
        assert "MAAS_DEVICE_MEMORY_MB" in reason and "first use" in reason
        assert "maas_model_evictions_total{" not in (await http.get("/metrics")).text
        await use(http, clock, waiting)  # served on first use, by evicting one
        assert (await statuses(http))[waiting] == "ready"


async def test_a_pinned_model_is_never_evicted(tmp_path: Path, tiny_vit_dir: Path) -> None:
    settings = residency_settings(tmp_path, tiny_vit_dir, m0="pinned: true\npreload: false")
    async with residency_gateway(settings) as (_, http, clock):
        assert (await http.get("/v1/models/m0")).json()["pinned"] is True
        await use(http, clock, "m0", "m1", "m2", "m3")  # m0, the least recently used, stays
        listed = await statuses(http)
        assert (listed["m0"], listed["m1"], listed["m2"], listed["m3"]) == (
            "ready",
            "unloaded",
            "unloaded",
            "ready",
        )


async def test_pinning_a_registered_model_through_the_admin_api(tmp_path: Path, tiny_vit_dir: Path) -> None:
    async with residency_gateway(residency_settings(tmp_path, tiny_vit_dir)) as (_, http, clock):
        made = await http.post(
            "/v1/admin/models",
            json={"name": "reg", "task": "image-classification", "source": str(tiny_vit_dir)},
        )
        assert made.status_code == 201 and made.json()["pinned"] is False
        await wait_status(http, "reg", {"ready"})
        pinned = await http.patch("/v1/admin/models/reg", json={"pinned": True})
        assert pinned.status_code == 200, pinned.text
        assert pinned.json()["pinned"] is True and pinned.json()["status"] == "ready"  # no reload
        await use(http, clock, "m0", "m1", "m2")
        listed = await statuses(http)
        assert listed["reg"] == "ready" and listed["m2"] == "ready"


async def test_a_model_with_a_request_in_flight_is_not_evicted(
    tmp_path: Path, tiny_vit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with oldest_held(tmp_path, tiny_vit_dir, monkeypatch) as (_, http, clock, gate):
        clock.advance(1)
        in_flight = asyncio.create_task(predict(http, "m0"))
        await asyncio.to_thread(gate.entered.wait, 30)  # m0 is on the device, the oldest used
        await use(http, clock, "m1", "m2")  # m2 needs room: m1 goes, not m0
        listed = await statuses(http)
        assert (listed["m0"], listed["m1"], listed["m2"]) == ("ready", "unloaded", "ready")
        gate.open.set()
        assert (await in_flight).status_code == 200


async def test_a_load_waits_for_a_model_in_use_to_make_room(
    tmp_path: Path, tiny_vit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = residency_settings(tmp_path, tiny_vit_dir, m0="pinned: true\npreload: false")
    async with residency_gateway(settings) as (app, http, clock):
        await use(http, clock, "m0", "m1")
        gate = Held(entry(app, "m1").adapter, monkeypatch)
        try:
            in_flight = asyncio.create_task(predict(http, "m1"))
            await asyncio.to_thread(gate.entered.wait, 30)
            waiting = asyncio.create_task(predict(http, "m2"))  # m0 pinned, m1 in flight: no room yet
            async with asyncio.timeout(30):
                while entry(app, "m2").users == 0 or entry(app, "m2").load_task is not None:
                    await asyncio.sleep(0.001)  # a poll interval, not a timing assumption
            assert not waiting.done() and (await statuses(http))["m2"] == "not_loaded"
        finally:
            gate.open.set()
        assert (await in_flight).status_code == 200
        answer = await waiting  # m1's request ended: m1 made room
        assert answer.status_code == 200, answer.text
        listed = await statuses(http)
        assert (listed["m0"], listed["m1"], listed["m2"]) == ("ready", "unloaded", "ready")


async def test_503_naming_the_setting_when_only_pinned_models_hold_the_budget(
    tmp_path: Path, tiny_vit_dir: Path
) -> None:
    pinned = {name: "pinned: true\npreload: false" for name in ("m0", "m1")}
    async with residency_gateway(residency_settings(tmp_path, tiny_vit_dir, **pinned)) as (_, http, clock):
        await use(http, clock, "m0", "m1")
        refused = await predict(http, "m2")
        assert refused.status_code == 503, refused.text
        assert "MAAS_DEVICE_MEMORY_MB" in refused.json()["error"]["message"]
        assert refused.headers["Retry-After"]
        listed = await statuses(http)
        assert (listed["m0"], listed["m1"], listed["m2"]) == ("ready", "ready", "not_loaded")


async def test_a_model_larger_than_the_budget_gets_503(tmp_path: Path, tiny_vit_dir: Path) -> None:
    settings = residency_settings(tmp_path, tiny_vit_dir)
    settings.device_memory_mb = 0.5 * vit_bytes(tiny_vit_dir) / MB
    async with residency_gateway(settings) as (_, http, _clock):
        refused = await predict(http, "m0")
        assert refused.status_code == 503 and "MAAS_DEVICE_MEMORY_MB" in refused.json()["error"]["message"]


async def test_concurrent_requests_share_one_load(
    tmp_path: Path, tiny_vit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with residency_gateway(residency_settings(tmp_path, tiny_vit_dir)) as (app, http, _clock):
        with held_loads(monkeypatch) as (release, entered):
            waiting = [asyncio.create_task(predict(http, "m0")) for _ in range(4)]
            await asyncio.to_thread(entered.wait, 30)
            async with asyncio.timeout(30):
                while entry(app, "m0").users < len(waiting):  # every request waits on the load
                    await asyncio.sleep(0.001)  # a poll interval, not a timing assumption
            assert (await statuses(http))["m0"] == "loading"
            release.set()
            answers = await asyncio.gather(*waiting)
        assert [a.status_code for a in answers] == [200] * 4
        assert await loads(http, "m0") == 1


async def test_a_deadline_passing_during_a_load_answers_504_and_the_load_goes_on(
    tmp_path: Path, tiny_vit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with residency_gateway(residency_settings(tmp_path, tiny_vit_dir)) as (_, http, clock):
        with held_loads(monkeypatch) as (release, entered):
            clock.advance(3600)  # every deadline (at most 30 s away) has passed on the residency clock
            late = await predict(http, "m0")
            assert late.status_code == 504, late.text
            assert "loading" in late.json()["error"]["message"]
            await asyncio.to_thread(entered.wait, 30)
            assert (await statuses(http))["m0"] == "loading"
            release.set()
            await wait_status(http, "m0", {"ready"})
        clock.advance(-3600)
        assert (await predict(http, "m0")).status_code == 200
        assert await loads(http, "m0") == 1


async def test_a_model_a_batch_job_runs_on_is_not_evicted(
    tmp_path: Path, tiny_vit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with oldest_held(tmp_path, tiny_vit_dir, monkeypatch) as (_, http, clock, gate):
        line = json.dumps({"inputs": base64.b64encode(image_bytes()).decode()}).encode() + b"\n"
        uploaded = await http.post(
            "/v1/files", files={"file": ("inputs.jsonl", line * 4)}, data={"purpose": "batch"}
        )
        assert uploaded.status_code == 201, uploaded.text
        job = await http.post("/v1/batches", json={"model": "m0", "input_file": uploaded.json()["id"]})
        assert job.status_code == 201, job.text
        await asyncio.to_thread(gate.entered.wait, 30)  # the job runs on m0, the oldest used
        await use(http, clock, "m1", "m2")
        listed = await statuses(http)
        assert (listed["m0"], listed["m1"], listed["m2"]) == ("ready", "unloaded", "ready")
        gate.open.set()
        async with asyncio.timeout(30):
            while (done := (await http.get(f"/v1/batches/{job.json()['id']}")).json())[
                "status"
            ] != "completed":
                await asyncio.sleep(0.05)  # a poll interval, not a timing assumption
        assert done["counts"]["completed"] == 4
