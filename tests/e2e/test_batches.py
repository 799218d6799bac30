"""Batch jobs through a real `maas serve`: a job whose gateway is SIGKILLed mid-way is taken over
by the next gateway once its lease expires and completes with every input once, in order, billed
once; a job cancelled mid-way stops and is billed for what it processed."""

from __future__ import annotations

import base64
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from service.db.models import UsageEvent
from tests.conftest import ADMIN_KEY, write_tiny_vit
from tests.e2e.conftest import start_server
from tests.training.zips import COLOURS, png

pytestmark = pytest.mark.e2e
INPUTS = 600
# a short lease, so that a killed gateway's job is taken over soon
ENV = {"MAAS_ADMIN_KEY": ADMIN_KEY, "MAAS_BATCH_LEASE_S": "2"}
DEADLINE_S = 180


def poll(http: httpx.Client, job_id: str, done: Any) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/v1/batches/{job_id}").json()
        if done(job):
            return job
        time.sleep(0.05)  # a poll interval, not a timing assumption
    raise AssertionError(f"batch {job_id}: {job}")


def new_job(http: httpx.Client) -> str:
    lines = b"".join(
        json.dumps({"inputs": base64.b64encode(png(COLOURS["red"], seed=i)).decode()}).encode() + b"\n"
        for i in range(INPUTS)
    )
    file_id = http.post("/v1/files", files={"file": ("in.jsonl", lines)}, data={"purpose": "batch"}).json()[
        "id"
    ]
    made = http.post("/v1/batches", json={"model": "tiny-vit", "input_file": file_id})
    assert made.status_code == 201, made.text
    job_id: str = made.json()["id"]
    return job_id


def batch_events(data_dir: Path) -> list[UsageEvent]:
    engine = create_engine(f"sqlite:///{data_dir / 'maas.db'}")
    try:
        with Session(engine) as session:
            return list(session.scalars(select(UsageEvent).where(UsageEvent.kind == "batch")))
    finally:
        engine.dispose()


def test_a_killed_gateways_job_is_taken_over_and_a_cancelled_one_billed_for_its_part(
    tmp_path: Path, tiny_vit_dir: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_vit(models, tiny_vit_dir, price="{per_image: 0.001, batch_discount: 0.5}")
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    first = start_server(models, tmp_path / "var", env=ENV)
    try:
        with httpx.Client(base_url=first.base_url, headers=headers, timeout=30) as http:
            job_id = new_job(http)
            under_way = poll(http, job_id, lambda j: j["counts"]["completed"] >= 10)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
    finally:
        first.stop()
    assert under_way["status"] == "running" and under_way["counts"]["completed"] < INPUTS, under_way

    second = start_server(models, tmp_path / "var", env=ENV)
    try:
        with httpx.Client(base_url=second.base_url, headers=headers, timeout=30) as http:
            done = poll(http, job_id, lambda j: j["status"] != "running")
            assert done["status"] == "completed" and done["counts"]["completed"] == INPUTS, second.log()
            lines = http.get(f"/v1/batches/{job_id}/results").text.splitlines()
            assert [json.loads(line)["index"] for line in lines] == list(range(INPUTS))

            cancelled_id = new_job(http)
            poll(http, cancelled_id, lambda j: j["counts"]["completed"] >= 10)
            assert http.post(f"/v1/batches/{cancelled_id}/cancel").status_code == 200
            cancelled = poll(http, cancelled_id, lambda j: j["status"] != "running")
            assert cancelled["status"] == "cancelled" and cancelled["counts"]["completed"] < INPUTS
    finally:
        second.stop()
    billed = {event.request_id: event for event in batch_events(tmp_path / "var")}
    assert billed[job_id].inputs == INPUTS and billed[job_id].amount_micro == INPUTS * 500
    part = cancelled["counts"]["completed"]
    assert billed[cancelled_id].inputs == part and billed[cancelled_id].amount_micro == part * 500
