"""Files and fine-tuning jobs through the HTTP API, in-process: upload, train the tiny ViT on
coloured squares, serve the result to its tenant only; cancel; resume after a restart."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.db.models import UsageEvent
from service.settings import Settings
from tests.api.jobs import DEADLINE_S, tenant_key, upload_file, wait_for_status
from tests.conftest import Gateway
from tests.training.zips import COLOURS, colour_dataset, png

pytestmark = pytest.mark.anyio


async def upload(http: httpx.AsyncClient, data: bytes) -> httpx.Response:
    return await upload_file(http, "colours.zip", data, "fine-tune", "application/zip")


async def create_job(http: httpx.AsyncClient, file_id: str, epochs: int, **extra: Any) -> dict[str, Any]:
    body = {
        "base_model": "tiny-vit",
        "training_file": file_id,
        "hyperparameters": {"epochs": epochs, "learning_rate": 0.005, "batch_size": 4},
        "suffix": "colours",
        **extra,
    }
    made = await http.post("/v1/fine-tunes", json=body)
    assert made.status_code == 201, made.text
    job: dict[str, Any] = made.json()
    return job


async def wait_for(http: httpx.AsyncClient, job_id: str, statuses: set[str]) -> dict[str, Any]:
    return await wait_for_status(http, f"/v1/fine-tunes/{job_id}", statuses)


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A Prometheus scrape as {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def training_events(app: FastAPI) -> list[UsageEvent]:
    sessions: sessionmaker[Session] = app.state.gateway.sessions
    with sessions() as session:
        return list(session.scalars(select(UsageEvent).where(UsageEvent.kind == "training")))


def billed_total(app: FastAPI) -> int:
    """The sum of every charged event's amount, straight from the table."""
    sessions: sessionmaker[Session] = app.state.gateway.sessions
    with sessions() as session:
        total = session.scalar(select(func.sum(UsageEvent.amount_micro)).where(UsageEvent.status == 200))
    return int(total or 0)


def training_cost(samples: int, compute_seconds: str) -> int:
    """The test manifest's training price: 0.0001 per sample, 0.01 per device second (micro-units)."""
    compute_us = int(Decimal(compute_seconds) * 1_000_000)
    return samples * 100 + (10_000 * compute_us + 500_000) // 1_000_000


async def test_files_are_checked_listed_deleted_and_private(gateway: Gateway) -> None:
    async with gateway.client() as admin:
        acme, other = await tenant_key(admin, "acme"), await tenant_key(admin, "other")
    async with gateway.client(acme) as mine, gateway.client(other) as theirs:
        refused = await upload(mine, b"not a zip")
        assert refused.status_code == 422
        assert refused.json()["error"]["type"] == "invalid_input"
        assert "not a zip archive" in refused.json()["error"]["message"]

        made = await upload(mine, colour_dataset(per_label=6))
        assert made.status_code == 201, made.text
        file = made.json()
        assert file["id"].startswith("file_")
        assert file["summary"]["train"] == {"blue": 6, "red": 6}
        assert [f["id"] for f in (await mine.get("/v1/files")).json()["data"]] == [file["id"]]

        assert (await theirs.get("/v1/files")).json()["data"] == []
        assert (await theirs.get(f"/v1/files/{file['id']}")).status_code == 404
        assert (await theirs.delete(f"/v1/files/{file['id']}")).status_code == 404
        job = await theirs.post(
            "/v1/fine-tunes", json={"base_model": "tiny-vit", "training_file": file["id"]}
        )
        assert job.status_code == 404

        assert (await mine.delete(f"/v1/files/{file['id']}")).status_code == 200
        assert (await mine.get(f"/v1/files/{file['id']}")).status_code == 404


async def test_a_job_trains_and_its_model_serves_its_tenant_only(gateway: Gateway) -> None:
    async with gateway.client() as admin:
        acme, other = await tenant_key(admin, "acme"), await tenant_key(admin, "other")
    async with gateway.client(acme) as mine, gateway.client(other) as theirs:
        file_id = (await upload(mine, colour_dataset(per_label=10))).json()["id"]
        bad = await mine.post(
            "/v1/fine-tunes", json={"base_model": "tiny-vit", "training_file": file_id, "method": "qlora"}
        )
        assert bad.status_code == 422 and "method" in bad.json()["error"]["message"]

        headers = {"Idempotency-Key": "job-1"}
        first = await mine.post(
            "/v1/fine-tunes",
            json={"base_model": "tiny-vit", "training_file": file_id, "hyperparameters": {"epochs": 3}},
            headers=headers,
        )
        again = await mine.post(
            "/v1/fine-tunes",
            json={"base_model": "tiny-vit", "training_file": file_id, "hyperparameters": {"epochs": 3}},
            headers=headers,
        )
        assert first.status_code == again.status_code == 201
        job_id = first.json()["id"]
        assert job_id.startswith("ftjob_") and again.json()["id"] == job_id
        assert first.json()["status"] == "queued"

        job = await wait_for(mine, job_id, {"succeeded", "failed", "cancelled"})
        assert job["status"] == "succeeded", job
        assert job["progress"]["steps_done"] == job["progress"]["steps_total"] > 0
        assert job["metrics"]["validation_samples"] == 4  # 20 % of each label, held out
        assert job["usage"]["trained_samples"] == 3 * 16 and job["usage"]["device_seconds"] > 0
        model = job["fine_tuned_model"]
        assert model.startswith("ft-tiny-vit-") and job_id.split("_")[1][:8] in model

        events = (await mine.get(f"/v1/fine-tunes/{job_id}/events")).json()["data"]
        assert [e["type"] for e in events if e["type"] == "epoch"] == ["epoch"] * 3
        assert [e["data"]["status"] for e in events if e["type"] == "status"] == [
            "queued",
            "running",
            "succeeded",
        ]

        image = png(COLOURS["red"], seed=7)
        served = await mine.post(
            f"/v1/models/{model}/predict", content=image, headers={"Content-Type": "image/png"}
        )
        assert served.status_code == 200, served.text
        assert {p["label"] for p in served.json()["predictions"][0]} == {"red", "blue"}
        assert model in [m["id"] for m in (await mine.get("/v1/models")).json()["data"]]

        # the training is the tenant's usage, on its own line; the new model costs what its base does
        usage = (await mine.get("/v1/usage", params={"group_by": "model"})).json()["data"]
        trained = next(u for u in usage if u["kind"] == "training")
        assert (trained["model"], trained["requests"], trained["errors"], trained["inputs"]) == (
            "tiny-vit",
            1,
            0,
            48,
        )
        assert abs(float(trained["compute_seconds"]) - job["usage"]["device_seconds"]) < 0.002
        assert trained["cost_micro"] == training_cost(48, trained["compute_seconds"]) > 48 * 100
        served_usage = next(u for u in usage if u["model"] == model)
        assert (served_usage["kind"], served_usage["inputs"], served_usage["cost_micro"]) == (
            "inference",
            1,
            1000,
        )
        assert (await theirs.get("/v1/usage")).json()["data"] == []

        scraped = metric_samples((await mine.get("/metrics")).text)
        assert scraped[("maas_training_steps_total", ())] == job["progress"]["steps_total"] == 3
        assert scraped[("maas_training_samples_total", ())] == 48
        assert scraped[("maas_training_step_seconds_count", ())] == 3
        assert scraped[("maas_fine_tune_jobs_total", (("status", "succeeded"),))] == 1
        assert scraped[("maas_fine_tune_jobs_running", ())] == 0
        assert ("maas_training_yield_seconds_total", ()) in scraped

        assert model not in [m["id"] for m in (await theirs.get("/v1/models")).json()["data"]]
        assert (await theirs.get(f"/v1/models/{model}")).status_code == 404
        stolen = await theirs.post(
            f"/v1/models/{model}/predict", content=image, headers={"Content-Type": "image/png"}
        )
        assert stolen.status_code == 404
        assert (await theirs.get(f"/v1/fine-tunes/{job_id}")).status_code == 404
        assert (await theirs.get(f"/v1/fine-tunes/{job_id}/events")).status_code == 404
        assert (await theirs.post(f"/v1/fine-tunes/{job_id}/cancel")).status_code == 404
        assert (await theirs.get("/v1/fine-tunes")).json()["data"] == []

    async with gateway.client() as admin:
        period = datetime.now(UTC).strftime("%Y-%m")
        export = (await admin.get("/v1/admin/billing/export", params={"period": period})).json()
    lines = [line for line in export["lines"] if line["kind"] == "training"]
    assert [(line["tenant"], line["model"], line["inputs"], line["requests"]) for line in lines] == [
        ("acme", "tiny-vit", 48, 1)
    ]
    assert (lines[0]["unit_price_micro"], lines[0]["compute_second_price_micro"]) == (100, 10_000)
    assert lines[0]["amount_micro"] == trained["cost_micro"]
    assert export["total_micro"] == billed_total(gateway.app) == trained["cost_micro"] + 1000
    assert [e.request_id for e in training_events(gateway.app)] == [job_id]

    # model allow-lists: naming the base (or the fine-tuned model itself) allows the tenant's own model
    async def predict_with(models: list[str], tenant: str = "acme") -> int:
        async with gateway.client() as admin:
            made = await admin.post(f"/v1/admin/tenants/{tenant}/keys", json={"models": models})
        async with gateway.client(made.json()["key"]) as http:
            answer = await http.post(
                f"/v1/models/{model}/predict", content=image, headers={"Content-Type": "image/png"}
            )
            listed = model in [m["id"] for m in (await http.get("/v1/models")).json()["data"]]
        assert listed == (answer.status_code == 200)
        return answer.status_code

    assert await predict_with(["tiny-vit"]) == 200
    assert await predict_with([model]) == 200
    assert await predict_with(["missing"]) == 403
    async with gateway.client() as admin:
        narrowed = await admin.patch("/v1/admin/tenants/acme", json={"allowed_models": ["tiny-vit"]})
        assert narrowed.status_code == 200, narrowed.text
    assert await predict_with([model]) == 200  # the key names it, the tenant allows its base
    assert await predict_with(["tiny-vit"]) == 200
    async with gateway.client() as admin:
        narrowed = await admin.patch("/v1/admin/tenants/acme", json={"allowed_models": ["missing"]})
        assert narrowed.status_code == 200, narrowed.text
    assert await predict_with([model]) == 403  # the tenant's list allows neither it nor its base
    assert await predict_with([model], tenant="other") == 404  # still another tenant's model


async def test_a_lora_job_saves_a_small_adapter_served_over_its_base(
    settings: Settings, tiny_vit_dir: Path
) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app), Gateway(app).client() as http:
        file_id = (await upload(http, colour_dataset(per_label=10))).json()["id"]
        made = await http.post(
            "/v1/fine-tunes",
            json={
                "base_model": "tiny-vit",
                "training_file": file_id,
                "method": "lora",
                "hyperparameters": {"epochs": 4, "learning_rate": 0.02, "batch_size": 4, "lora_rank": 4},
            },
        )
        assert made.status_code == 201, made.text
        assert made.json()["method"] == "lora"
        job = await wait_for(http, made.json()["id"], {"succeeded", "failed", "cancelled"})
        assert job["status"] == "succeeded", job
        assert job["metrics"]["validation_accuracy"] == 1.0  # red or blue: easy, even over a random base
        model = job["fine_tuned_model"]

        folder = settings.data_dir / "models" / model
        saved = {p.name for p in folder.iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "labels.json"} <= saved
        assert "model.safetensors" not in saved  # only the adapter and the new head, not the base
        adapter_bytes = (folder / "adapter_model.safetensors").stat().st_size
        full_bytes = (tiny_vit_dir / "model.safetensors").stat().st_size
        assert adapter_bytes * 5 < full_bytes, (adapter_bytes, full_bytes)

        red = await http.post(
            f"/v1/models/{model}/predict",
            content=png(COLOURS["red"], seed=7),
            headers={"Content-Type": "image/png"},
        )
        assert red.status_code == 200, red.text
        assert red.json()["predictions"][0][0]["label"] == "red"

        again = await http.post(
            "/v1/fine-tunes", json={"base_model": model, "training_file": file_id, "method": "full"}
        )
        assert again.status_code == 422 and "LoRA adapter" in again.json()["error"]["message"]

    restarted = create_app(settings)  # the adapter is registered again over its base, and serves
    async with restarted.router.lifespan_context(restarted), Gateway(restarted).client() as http:
        await restarted.state.gateway.registry.preload_done.wait()
        blue = await http.post(
            f"/v1/models/{model}/predict",
            content=png(COLOURS["blue"], seed=3),
            headers={"Content-Type": "image/png"},
        )
        assert blue.status_code == 200, blue.text
        assert blue.json()["predictions"][0][0]["label"] == "blue"


def _tiny_resnet(folder: Path) -> Path:
    """An image classifier without attention: nothing for LoRA's query/value adapters."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1], num_labels=2)
    ResNetForImageClassification(config).save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(folder)
    return folder


async def test_lora_on_a_model_without_attention_is_refused_when_the_job_is_created(
    settings: Settings, tmp_path: Path
) -> None:
    source = _tiny_resnet(tmp_path / "tiny-resnet")
    manifest = f"name: tiny-resnet\ntask: image-classification\nsource: {source}\npreload: false\n"
    (settings.models_dir / "tiny-resnet.yaml").write_text(manifest, encoding="utf-8")
    app = create_app(settings)
    async with app.router.lifespan_context(app), Gateway(app).client() as http:
        file_id = (await upload(http, colour_dataset(per_label=5))).json()["id"]
        job = {"base_model": "tiny-resnet", "training_file": file_id}
        lora = await http.post("/v1/fine-tunes", json={**job, "method": "lora"})
        assert lora.status_code == 422, lora.text
        assert "no attention query/value layers" in lora.json()["error"]["message"]
        full = await http.post("/v1/fine-tunes", json={**job, "method": "full"})
        assert full.status_code == 201, full.text
        await http.post(f"/v1/fine-tunes/{full.json()['id']}/cancel")
        assert not (await http.get("/v1/fine-tunes")).json()["data"][1:]  # the refused job was never made


async def test_cancel_stops_a_running_job(client: httpx.AsyncClient) -> None:
    file_id = (await upload(client, colour_dataset(per_label=10))).json()["id"]
    urgent = await client.post(
        "/v1/fine-tunes", json={"base_model": "tiny-vit", "training_file": file_id, "priority": "urgent"}
    )
    assert urgent.status_code == 422 and "priority" in urgent.json()["error"]["message"]
    job = await create_job(client, file_id, epochs=1000, priority="high")
    assert job["priority"] == "high"
    deadline = time.monotonic() + DEADLINE_S
    while (await client.get(f"/v1/fine-tunes/{job['id']}")).json()["progress"]["steps_done"] == 0:
        assert time.monotonic() < deadline, "the job never made a step"
        await asyncio.sleep(0.05)  # a poll interval
    cancelled = await client.post(f"/v1/fine-tunes/{job['id']}/cancel")
    assert cancelled.status_code == 200
    done = await wait_for(client, job["id"], {"cancelled", "succeeded", "failed"})
    assert done["status"] == "cancelled"
    assert done["fine_tuned_model"] is None
    assert done["progress"]["steps_done"] < done["progress"]["steps_total"]
    assert (await client.post(f"/v1/fine-tunes/{job['id']}/cancel")).status_code == 409

    # the work done before the cancel is billed: every sample trained, its device time
    samples = done["usage"]["trained_samples"]
    assert samples == 4 * done["progress"]["steps_done"] > 0  # batches of 4 over 16 samples
    usage = (await client.get("/v1/usage")).json()["data"]
    assert [(u["kind"], u["requests"], u["inputs"]) for u in usage] == [("training", 1, samples)]
    assert usage[0]["cost_micro"] == training_cost(samples, usage[0]["compute_seconds"]) > 0


async def test_a_restarted_gateway_resumes_the_job_from_its_checkpoint(settings: Settings) -> None:
    reached, release = threading.Event(), threading.Event()

    def hold_after_first_epoch(job_id: str, epoch: int) -> None:
        if epoch == 1:
            reached.set()
            release.wait(DEADLINE_S)  # the gateway stops while the job sits at this checkpoint

    first = create_app(settings)
    async with first.router.lifespan_context(first):
        first.state.gateway.runner.checkpoint_listeners.append(hold_after_first_epoch)
        async with Gateway(first).client() as http:
            file_id = (await upload(http, colour_dataset(per_label=10))).json()["id"]
            job = await create_job(http, file_id, epochs=3)
        try:
            assert await asyncio.to_thread(reached.wait, DEADLINE_S)
            stopping = asyncio.create_task(first.state.gateway.runner.stop())
            await asyncio.sleep(0)  # let stop() flag the job before it goes on
        finally:
            release.set()
        await stopping
        first_part = first.state.gateway.fine_tunes.get_job(None, job["id"])
        assert first_part.trained_samples == 16 and first_part.device_seconds > 0
        assert training_events(first) == []  # not ended: nothing billed yet

    second = create_app(settings)
    async with second.router.lifespan_context(second), Gateway(second).client() as http:
        done = await wait_for(http, job["id"], {"succeeded", "failed", "cancelled"})
        assert done["status"] == "succeeded", done
        assert [e["epoch"] for e in done["metrics"]["epochs"]] == [1, 2, 3]
        events = (await http.get(f"/v1/fine-tunes/{job['id']}/events")).json()["data"]
        kinds = [e["type"] for e in events]
        assert kinds.count("epoch") == 3  # epoch 1 was not run twice
        resumes = [e["message"] for e in events if e["type"] == "resume"]
        assert resumes == ["resuming from the last checkpoint", "resumed after epoch 1 and finished"]
        # one event for the whole job: epoch 1 (run before the restart) is in it, once
        [billed] = training_events(second)
        assert billed.request_id == job["id"] and billed.inputs == done["usage"]["trained_samples"] == 48
        assert billed.compute_us / 1e6 > first_part.device_seconds
        assert abs(billed.compute_us / 1e6 - done["usage"]["device_seconds"]) < 0.002
        served = await http.post(
            f"/v1/models/{done['fine_tuned_model']}/predict",
            content=png(COLOURS["blue"], seed=3),
            headers={"Content-Type": "image/png"},
        )
        assert served.status_code == 200


async def test_an_upload_over_the_limit_is_refused_with_413(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"max_upload_bytes": 2000}))
    async with app.router.lifespan_context(app), Gateway(app).client() as http:
        refused = await upload(http, colour_dataset(per_label=10))
        assert refused.status_code == 413
        assert refused.json()["error"]["message"] == "the file exceeds the upload limit of 2000 bytes"
        assert (await http.get("/v1/files")).json()["data"] == []
