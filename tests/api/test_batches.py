"""Batch jobs through the HTTP API, in-process, on SQLite and PostgreSQL: a file of inputs run
through the tiny ViT in the batch class, results in input order with an error line for a bad
input, cancel, resume after a restart, privacy, and the discounted price in usage and billing."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.db.models import UsageEvent
from service.serving.runtime.transformers_adapter import ImageClassificationAdapter
from service.settings import Settings
from tests.api.conftest import Gate
from tests.api.jobs import DEADLINE_S, tenant_key, upload_file, wait_for_status
from tests.conftest import Gateway, write_tiny_vit
from tests.training.zips import COLOURS, build_zip, png

pytestmark = pytest.mark.anyio
PER_IMAGE_MICRO, DISCOUNT = 1000, 0.4  # the manifest below: 0.001 an image, 40 % off in batches
BATCH_MICRO = 600


@pytest.fixture
def models_dir(tmp_path: Path, tiny_vit_dir: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    write_tiny_vit(folder, tiny_vit_dir, price=f"{{per_image: 0.001, batch_discount: {DISCOUNT}}}")
    return folder


@pytest.fixture
def batch_settings(settings: Settings, database_url: str) -> Settings:
    return settings.model_copy(update={"database_url": database_url, "batch_in_flight": 2})


def jsonl(images: list[bytes]) -> bytes:
    return b"".join(json.dumps({"inputs": base64.b64encode(i).decode()}).encode() + b"\n" for i in images)


def images(count: int) -> list[bytes]:
    return [png(COLOURS["red" if i % 2 else "blue"], seed=i) for i in range(count)]


async def upload(http: httpx.AsyncClient, data: bytes, name: str = "inputs.jsonl") -> str:
    made = await upload_file(http, name, data, "batch")
    assert made.status_code == 201, made.text
    file_id: str = made.json()["id"]
    return file_id


async def create(http: httpx.AsyncClient, file_id: str) -> dict[str, Any]:
    made = await http.post("/v1/batches", json={"model": "tiny-vit", "input_file": file_id})
    assert made.status_code == 201, made.text
    job: dict[str, Any] = made.json()
    return job


async def wait_for(http: httpx.AsyncClient, job_id: str, statuses: set[str]) -> dict[str, Any]:
    return await wait_for_status(http, f"/v1/batches/{job_id}", statuses)


async def results(http: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    answer = await http.get(f"/v1/batches/{job_id}/results")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/jsonl"
    return [json.loads(line) for line in answer.text.splitlines()]


def batch_events(app: FastAPI) -> list[UsageEvent]:
    sessions: sessionmaker[Session] = app.state.gateway.sessions
    with sessions() as session:
        return list(session.scalars(select(UsageEvent).where(UsageEvent.kind == "batch")))


async def test_results_come_in_input_order_with_an_error_line_for_a_bad_image(
    batch_settings: Settings,
) -> None:
    app = create_app(batch_settings)
    async with app.router.lifespan_context(app):
        gateway = Gateway(app)
        async with gateway.client() as admin:
            acme, other = await tenant_key(admin, "acme"), await tenant_key(admin, "other")
        inputs = images(5)
        inputs[2] = b"not an image at all"
        async with gateway.client(acme) as mine, gateway.client(other) as theirs:
            job = await create(mine, await upload(mine, jsonl(inputs)))
            assert job["id"].startswith("batch_") and job["status"] == "queued"
            assert job["counts"] == {"total": 5, "completed": 0, "failed": 0}
            done = await wait_for(mine, job["id"], {"completed", "failed", "cancelled"})
            assert done["status"] == "completed", done
            assert done["counts"] == {"total": 5, "completed": 4, "failed": 1}
            assert done["finished_at"] is not None
            lines = await results(mine, job["id"])
            assert [line["index"] for line in lines] == [0, 1, 2, 3, 4]
            assert lines[2]["error"]["type"] == "invalid_input" and "input 2" in lines[2]["error"]["message"]
            assert "predictions" not in lines[2]
            for line in lines[:2] + lines[3:]:
                assert line["predictions"][0]["label"] and "error" not in line
            # the same image answered by predict: the same classes
            single = await mine.post(
                "/v1/models/tiny-vit/predict", content=inputs[0], headers={"Content-Type": "image/png"}
            )
            assert [p["label"] for p in single.json()["predictions"][0]] == [
                p["label"] for p in lines[0]["predictions"]
            ]
            assert [j["id"] for j in (await mine.get("/v1/batches")).json()["data"]] == [job["id"]]

            # another tenant's job does not exist for it
            assert (await theirs.get("/v1/batches")).json()["data"] == []
            for answer in (
                await theirs.get(f"/v1/batches/{job['id']}"),
                await theirs.get(f"/v1/batches/{job['id']}/results"),
                await theirs.post(f"/v1/batches/{job['id']}/cancel"),
            ):
                assert answer.status_code == 404, answer.text
            assert (await mine.post(f"/v1/batches/{job['id']}/cancel")).status_code == 409

        # metered once, the answered inputs at the discounted price; in the billing export
        [event] = batch_events(app)
        assert (event.request_id, event.inputs, event.status) == (job["id"], 4, 200)
        assert event.per_input_micro == BATCH_MICRO and event.amount_micro == 4 * BATCH_MICRO
        async with gateway.client() as admin:
            period = datetime.now(UTC).strftime("%Y-%m")
            export = (await admin.get("/v1/admin/billing/export", params={"period": period})).json()
        [line] = [line for line in export["lines"] if line["kind"] == "batch"]
        assert (line["tenant"], line["model"], line["inputs"]) == ("acme", "tiny-vit", 4)
        assert line["unit_price"] == "0.000600" and line["amount_micro"] == 4 * BATCH_MICRO


async def test_a_zip_of_images_is_checked_at_upload_and_its_entries_named_in_the_results(
    batch_settings: Settings,
) -> None:
    app = create_app(batch_settings)
    async with app.router.lifespan_context(app), Gateway(app).client() as http:
        broken = build_zip({"a.png": png(COLOURS["red"]), "b.png": b"garbage"})
        refused = await http.post("/v1/files", files={"file": ("in.zip", broken)}, data={"purpose": "batch"})
        assert refused.status_code == 422 and "'b.png'" in refused.json()["error"]["message"]
        bad_line = await http.post(
            "/v1/files",
            files={"file": ("in.jsonl", b'{"inputs": "x"}\n{"text": 1}\n')},
            data={"purpose": "batch"},
        )
        assert bad_line.status_code == 422 and "line 2" in bad_line.json()["error"]["message"]

        names = ["z.png", "a.png", "m/q.png"]
        zipped = build_zip({name: png(COLOURS["green"], seed=i) for i, name in enumerate(names)})
        job = await create(http, await upload(http, zipped, "in.zip"))
        done = await wait_for(http, job["id"], {"completed", "failed", "cancelled"})
        assert done["counts"] == {"total": 3, "completed": 3, "failed": 0}
        assert [line["input"] for line in await results(http, job["id"])] == names  # the zip's order


async def test_cancel_stops_the_job_and_meters_the_inputs_it_processed(
    batch_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate()
    gate.hold(ImageClassificationAdapter, monkeypatch)
    app = create_app(batch_settings)
    async with app.router.lifespan_context(app), Gateway(app).client() as http:
        await app.state.gateway.registry.preload_done.wait()  # the warm-up's forward pass is not the job's
        held = asyncio.Event()

        def hold_the_model_after_the_first_lines(job_id: str, written: int) -> None:
            if not held.is_set():  # its first lines are committed: the next inputs wait at the model
                gate.open.clear()
                gate.entered.clear()
                held.set()

        app.state.gateway.batch_runner.progress_listeners.append(hold_the_model_after_the_first_lines)
        job = await create(http, await upload(http, jsonl(images(8))))
        try:
            async with asyncio.timeout(DEADLINE_S):
                await held.wait()
            assert await asyncio.to_thread(gate.entered.wait, DEADLINE_S)
            cancelling = await http.post(f"/v1/batches/{job['id']}/cancel")
            assert cancelling.status_code == 200
            # cancelled while its inputs wait at the model, not only once they come back
            done = await wait_for(http, job["id"], {"completed", "failed", "cancelled"})
        finally:
            gate.open.set()
        assert done["status"] == "cancelled", done
        processed = done["counts"]["completed"]
        assert 0 < processed < 8 and done["counts"]["failed"] == 0
        assert [line["index"] for line in await results(http, job["id"])] == list(range(processed))
        [event] = batch_events(app)
        assert event.inputs == processed and event.amount_micro == processed * BATCH_MICRO


async def test_a_job_held_back_longer_than_its_lease_keeps_it(
    batch_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease_s = 1.5
    gate = Gate()
    gate.hold(ImageClassificationAdapter, monkeypatch)
    app = create_app(batch_settings.model_copy(update={"batch_lease_s": lease_s}))
    async with app.router.lifespan_context(app), Gateway(app).client() as http:
        await app.state.gateway.registry.preload_done.wait()
        store = app.state.gateway.batches
        gate.open.clear()
        gate.entered.clear()
        job = await create(http, await upload(http, jsonl(images(4))))
        try:
            assert await asyncio.to_thread(gate.entered.wait, DEADLINE_S)  # its first inputs wait
            first = store.get(None, job["id"])
            assert first.lease_expires_at is not None and first.completed == 0
            renewed_past = first.lease_expires_at + timedelta(seconds=lease_s)
            async with asyncio.timeout(DEADLINE_S):  # renewed past the first lease's end
                while (now := store.get(None, job["id"])).lease_expires_at <= renewed_past:
                    await asyncio.sleep(0.05)
            assert now.lease_owner == first.lease_owner and now.completed == 0  # with no line written
            assert await asyncio.to_thread(store.claim, "another-replica", lease_s) is None
        finally:
            gate.open.set()
        done = await wait_for(http, job["id"], {"completed", "failed", "cancelled"})
        assert done["status"] == "completed" and done["counts"]["completed"] == 4, done
        assert [line["index"] for line in await results(http, job["id"])] == [0, 1, 2, 3]


async def test_a_job_resumes_where_it_stopped_after_a_restart(batch_settings: Settings) -> None:
    first = create_app(batch_settings)
    async with first.router.lifespan_context(first):
        runner = first.state.gateway.batch_runner
        halted = asyncio.Event()

        def halt_after_four(job_id: str, written: int) -> None:
            if written >= 4:  # the gateway stops with 4 or more lines committed
                runner.halt()
                halted.set()

        runner.progress_listeners.append(halt_after_four)
        async with Gateway(first).client() as http:
            job = await create(http, await upload(http, jsonl(images(10))))
        async with asyncio.timeout(DEADLINE_S):
            await halted.wait()
        await runner.stop()
        stopped = first.state.gateway.batches.get(None, job["id"])
        assert stopped.status == "running" and 4 <= stopped.completed < 10 and stopped.lease_owner is None
        assert batch_events(first) == []  # not ended: nothing billed yet

    second = create_app(batch_settings)
    async with second.router.lifespan_context(second), Gateway(second).client() as http:
        done = await wait_for(http, job["id"], {"completed", "failed", "cancelled"})
        assert done["counts"] == {"total": 10, "completed": 10, "failed": 0}
        assert [line["index"] for line in await results(http, job["id"])] == list(range(10))
        [event] = batch_events(second)
        assert event.inputs == 10 and event.amount_micro == 10 * BATCH_MICRO


async def test_scopes_and_files_are_checked_when_a_job_is_created(batch_settings: Settings) -> None:
    app = create_app(batch_settings)
    async with app.router.lifespan_context(app):
        gateway = Gateway(app)
        async with gateway.client() as admin:
            await tenant_key(admin, "acme")
            made = await admin.post("/v1/admin/tenants/acme/keys", json={"scopes": ["inference"]})
            inference_only = made.json()["key"]
        async with gateway.client(inference_only) as http:
            dataset = await http.post(
                "/v1/files", files={"file": ("d.zip", build_zip({"red/a.png": png(COLOURS["red"])}))}
            )
            assert dataset.status_code == 403  # a fine-tuning dataset needs the fine_tune scope
            file_id = await upload(http, jsonl(images(3)))
            job = await create(http, file_id)
            missing = await http.post("/v1/batches", json={"model": "nope", "input_file": file_id})
            assert missing.status_code == 404
            no_file = await http.post("/v1/batches", json={"model": "tiny-vit", "input_file": "file_nope"})
            assert no_file.status_code == 404
            await wait_for(http, job["id"], {"completed"})
        async with gateway.client() as admin:  # the admin key's tenant: a dataset is not a batch file
            dataset_id = (
                await admin.post(
                    "/v1/files",
                    files={
                        "file": (
                            "d.zip",
                            build_zip(
                                {
                                    f"{c}/{i}.png": png(COLOURS[c], i)
                                    for c in ("red", "blue")
                                    for i in range(5)
                                }
                            ),
                        )
                    },
                    data={"purpose": "fine-tune"},
                )
            ).json()["id"]
            wrong = await admin.post("/v1/batches", json={"model": "tiny-vit", "input_file": dataset_id})
            assert wrong.status_code == 422 and "input_file" in wrong.json()["error"]["message"]


async def test_a_key_sees_and_deletes_only_the_files_its_scopes_use(batch_settings: Settings) -> None:
    app = create_app(batch_settings)
    async with app.router.lifespan_context(app):
        gateway = Gateway(app)
        async with gateway.client() as admin:
            await tenant_key(admin, "acme")
            keys = {
                scope: (await admin.post("/v1/admin/tenants/acme/keys", json={"scopes": [scope]})).json()[
                    "key"
                ]
                for scope in ("inference", "fine_tune")
            }
        async with (
            gateway.client(keys["inference"]) as inference,
            gateway.client(keys["fine_tune"]) as trainer,
        ):
            batch_file = await upload(inference, jsonl(images(2)))
            dataset = await trainer.post(
                "/v1/files",
                files={
                    "file": (
                        "d.zip",
                        build_zip({f"{c}/{i}.png": png(COLOURS[c], i) for c in COLOURS for i in range(5)}),
                    )
                },
            )
            assert dataset.status_code == 201, dataset.text
            dataset_file = dataset.json()["id"]
            assert [f["id"] for f in (await inference.get("/v1/files")).json()["data"]] == [batch_file]
            assert [f["id"] for f in (await trainer.get("/v1/files")).json()["data"]] == [dataset_file]
            assert (await inference.delete(f"/v1/files/{dataset_file}")).status_code == 403
            assert (await trainer.get(f"/v1/files/{batch_file}")).status_code == 403
            assert (await trainer.get(f"/v1/files/{dataset_file}")).status_code == 200  # still there
            assert (await inference.delete(f"/v1/files/{batch_file}")).status_code == 200


async def test_a_jobs_answered_inputs_count_against_a_monthly_quota(batch_settings: Settings) -> None:
    app = create_app(batch_settings)
    async with app.router.lifespan_context(app):
        gateway = Gateway(app)
        async with gateway.client() as admin:
            limited, free = await tenant_key(admin, "limited"), await tenant_key(admin, "free")
            quota = await admin.patch("/v1/admin/tenants/limited", json={"monthly_quota_inputs": 4})
            assert quota.status_code == 200, quota.text
            free_id = (await admin.get("/v1/admin/tenants/free")).json()["id"]
        inputs = images(5)
        inputs[2] = b"not an image at all"  # its error line is not counted
        async with gateway.client(limited) as mine:
            job = await create(mine, await upload(mine, jsonl(inputs)))  # within the quota when made
            done = await wait_for(mine, job["id"], {"completed", "failed", "cancelled"})
            assert done["status"] == "completed" and done["counts"]["completed"] == 4
            spent = await mine.post(
                "/v1/models/tiny-vit/predict", content=images(1)[0], headers={"Content-Type": "image/png"}
            )
            assert spent.status_code == 429 and "monthly quota" in spent.json()["error"]["message"]
            again = await mine.post(
                "/v1/batches", json={"model": "tiny-vit", "input_file": job["input_file"]}
            )
            assert again.status_code == 429 and int(again.headers["Retry-After"]) > 0
        async with gateway.client(free) as theirs:  # no quota: nothing counted, as for requests
            other = await create(theirs, await upload(theirs, jsonl(images(2))))
            assert (await wait_for(theirs, other["id"], {"completed", "failed"}))["status"] == "completed"
        assert app.state.gateway.quota.used(free_id) == 0
