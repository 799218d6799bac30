"""Two real `maas serve` replicas on one PostgreSQL database, one Redis and one shared data
directory (as pods mounting one ReadWriteMany volume): what one replica does, the other sees.

Load goes across both; a key revoked (a tenant suspended) on one is refused by the other on the
next request, the change carried by Redis pub/sub; usage and billing totals read on either equal
what was answered on both; one rate limit holds across both; a fine-tune job is run by exactly one
replica, and its model then serves its tenant on both.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import (
    TINY_LABELS,
    fresh_postgres_database,
    image_bytes,
    postgres_url_or_skip,
    redis_url_or_skip,
    write_tiny_vit,
)
from tests.e2e.conftest import Server, start_server, wait_until_finished
from tests.training.zips import colour_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

ADMIN = "mk_e2e_replicas_admin_key_0123456789abcdef"
PRICE_MICRO = 1000  # the manifest's per_image price, 0.001, in micro-units
PNG = image_bytes()
JOB_DEADLINE_S = 180
DELIVERY_S = 0.1  # a key change published through Redis reaches the other replica within this


class Replicas:
    """The two gateways, the database they share, and admin clients for each."""

    def __init__(self, servers: list[Server], database_url: str) -> None:
        self.servers = servers
        self.database_url = database_url

    def client(self, index: int, key: str = ADMIN) -> httpx.Client:
        return httpx.Client(
            base_url=self.servers[index].base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

    def tenant_key(self, index: int, tenant: str, **limits: Any) -> str:
        """Create `tenant` (with `limits`) and a key for it, through replica `index`."""
        with self.client(index) as admin:
            made = admin.post("/v1/admin/tenants", json={"name": tenant, **limits})
            assert made.status_code == 201, made.text
            key = admin.post(f"/v1/admin/tenants/{tenant}/keys", json={})
            assert key.status_code == 201, key.text
        secret: str = key.json()["key"]
        return secret


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, tiny_vit_dir: Path) -> Iterator[Replicas]:
    redis_url = redis_url_or_skip()
    with fresh_postgres_database(postgres_url_or_skip()) as database_url:
        root = tmp_path_factory.mktemp("replicas")
        models = root / "models"
        models.mkdir()
        write_tiny_vit(models, tiny_vit_dir)
        env = {
            "MAAS_DATABASE_URL": database_url,
            "MAAS_REDIS_URL": redis_url,
            "MAAS_ADMIN_KEY": ADMIN,
            "MAAS_TORCH_THREADS": "1",
            # a rate-limited tenant below gets a burst of 2 at 0.05 rps: one token per 20 s
            "MAAS_RATE_LIMIT_BURST_FACTOR": "40",
        }
        shared = root / "shared"  # the one data directory of both: dataset files, checkpoints, models
        # both start at once on the empty database, as pods of a new Deployment do
        with ThreadPoolExecutor(2) as pool:
            starting = [pool.submit(start_server, models, shared, env=env) for _ in range(2)]
        servers = [s.result() for s in starting if s.exception() is None]
        try:
            for s in starting:
                if (error := s.exception()) is not None:
                    raise error
            yield Replicas(servers, database_url)
        finally:
            for server in servers:
                server.stop()


def predict(http: httpx.Client, inputs: int = 1, model: str = "tiny-vit") -> httpx.Response:
    if inputs == 1:
        return http.post(f"/v1/models/{model}/predict", content=PNG, headers={"Content-Type": "image/png"})
    files = [("file", (f"{i}.png", PNG, "image/png")) for i in range(inputs)]
    return http.post(f"/v1/models/{model}/predict", files=files)


def test_both_replicas_started_on_one_price_row_per_model(replicas: Replicas) -> None:
    engine = create_engine(replicas.database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT kind, per_input_micro FROM prices WHERE model = 'tiny-vit' ORDER BY kind")
            ).all()
    finally:
        engine.dispose()
    assert [(r.kind, r.per_input_micro) for r in rows] == [
        ("batch", PRICE_MICRO),  # no batch_discount in the manifest
        ("inference", PRICE_MICRO),
        ("training", 0),
    ]


def test_usage_of_load_across_both_replicas_is_exact_on_either(replicas: Replicas) -> None:
    key = replicas.tenant_key(0, "load")
    clients = [replicas.client(0, key), replicas.client(1, key)]
    # 48 requests, alternating replicas, 8 at a time; every third carries 2 images
    plan = [(i % 2, 2 if i % 3 == 0 else 1) for i in range(48)]
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda step: predict(clients[step[0]], step[1]), plan))
    finally:
        for http in clients:
            http.close()
    answered = [(inputs, a) for (_, inputs), a in zip(plan, answers, strict=True) if a.status_code == 200]
    assert len(answered) >= len(plan) // 2, [a.status_code for a in answers]  # 503s only if queues fill
    assert {a.status_code for a in answers} <= {200, 503}
    for inputs, answer in answered:
        assert len(answer.json()["predictions"]) == inputs
        assert answer.json()["usage"]["cost_micro"] == inputs * PRICE_MICRO
    billed_inputs = sum(inputs for inputs, _ in answered)
    period = datetime.now(UTC).strftime("%Y-%m")
    for index in (0, 1):
        with replicas.client(index) as admin:
            usage = admin.get("/v1/admin/usage", params={"tenant": "load"}).json()
            export = admin.get("/v1/admin/billing/export", params={"period": period}).json()
        [total] = usage["data"]
        assert total["requests"] == len(plan)  # every answer has its event, 200 or not
        assert total["errors"] == len(plan) - len(answered)
        assert total["inputs"] == billed_inputs
        assert total["cost_micro"] == billed_inputs * PRICE_MICRO
        [line] = [line for line in export["lines"] if line["tenant"] == "load"]
        assert (line["model"], line["requests"], line["inputs"]) == ("tiny-vit", len(answered), billed_inputs)
        assert line["amount_micro"] == billed_inputs * PRICE_MICRO


def answered_after(http: httpx.Client, status: int, since: float, before: int = 200) -> tuple[float, int]:
    """Predict through `http` until answered `status` (`before` until then), within DELIVERY_S of
    `since` (pub/sub delivers asynchronously): seconds from `since` to that answer, requests sent."""
    sent = 0
    while True:
        sent += 1
        answer = predict(http).status_code
        if answer == status:
            return time.monotonic() - since, sent
        assert answer == before and time.monotonic() - since < DELIVERY_S, (answer, time.monotonic() - since)


def test_a_key_revoked_on_one_replica_is_refused_by_the_other_on_the_next_request(
    replicas: Replicas,
) -> None:
    with replicas.client(0) as admin:
        assert admin.post("/v1/admin/tenants", json={"name": "revoke"}).status_code == 201
        made = admin.post("/v1/admin/tenants/revoke/keys", json={}).json()
        with replicas.client(1, made["key"]) as other:
            cached_at = time.monotonic()
            assert predict(other).status_code == 200  # replica B now holds the key in its 1 s cache
            assert admin.delete(f"/v1/admin/keys/{made['id']}").status_code == 200
            revoked_at = time.monotonic()
            took, sent = answered_after(other, 401, revoked_at)
            # B's cache entry lives until at least cached_at + 1 s: only the Redis message explains this
            assert revoked_at + took - cached_at < 1.0, (revoked_at - cached_at, took)
            print(
                f"\nrevocation on replica A refused by replica B {took * 1000:.1f} ms after the DELETE "
                f"returned (request {sent} after it; B's cache entry was "
                f"{(revoked_at - cached_at) * 1000:.0f} ms old)"
            )
            assert [predict(other).status_code for _ in range(3)] == [401] * 3  # and stays refused


def test_a_tenant_suspended_on_one_replica_is_refused_by_the_other_on_the_next_request(
    replicas: Replicas,
) -> None:
    key = replicas.tenant_key(1, "suspend")
    with replicas.client(0, key) as mine, replicas.client(1) as admin:
        cached_at = time.monotonic()
        assert predict(mine).status_code == 200  # replica A caches the key
        assert admin.post("/v1/admin/tenants/suspend/suspend").status_code == 200
        suspended_at = time.monotonic()
        took, _ = answered_after(mine, 403, suspended_at)
        assert suspended_at + took - cached_at < 1.0, (suspended_at - cached_at, took)
        print(f"\nsuspension on replica B refused by replica A {took * 1000:.1f} ms after it returned")
        assert admin.post("/v1/admin/tenants/suspend/resume").status_code == 200
        resumed_at = time.monotonic()
        answered_after(mine, 200, resumed_at, before=403)  # and resuming holds as fast


def test_one_rate_limit_holds_across_both_replicas(replicas: Replicas) -> None:
    # burst 2 (0.05 rps x 40), then one token per 20 s: the test sees the burst and little more
    key = replicas.tenant_key(1, "limited", rate_limit_rps=0.05)
    clients = [replicas.client(0, key), replicas.client(1, key)]
    started = time.monotonic()
    try:
        answers = [predict(clients[i % 2]) for i in range(6)]
    finally:
        for http in clients:
            http.close()
    elapsed = time.monotonic() - started
    statuses = [a.status_code for a in answers]
    allowance = 2 + int(elapsed * 0.05)
    assert statuses[:2] == [200, 200], statuses  # one on each replica: they drew from one bucket
    assert statuses.count(200) == allowance and statuses.count(429) == 6 - allowance, (statuses, elapsed)
    assert all(int(a.headers["retry-after"]) >= 1 for a in answers if a.status_code == 429)


def test_each_fine_tune_runs_on_exactly_one_replica_and_serves_its_tenant_on_both(
    replicas: Replicas,
) -> None:
    key, stranger = replicas.tenant_key(0, "tuner"), replicas.tenant_key(1, "stranger")
    mine = [replicas.client(0, key), replicas.client(1, key)]
    theirs = [replicas.client(0, stranger), replicas.client(1, stranger)]
    try:
        uploaded = mine[0].post(
            "/v1/files",
            files={"file": ("colours.zip", colour_dataset(per_label=8), "application/zip")},
            data={"purpose": "fine-tune"},
        )
        assert uploaded.status_code == 201, uploaded.text
        file_id = uploaded.json()["id"]
        assert [f["id"] for f in mine[1].get("/v1/files").json()["data"]] == [file_id]
        # one job queued through each replica: both runners race for both jobs
        jobs = []
        for index, suffix in ((0, "first"), (1, "second")):
            made = mine[index].post(
                "/v1/fine-tunes",
                json={
                    "base_model": "tiny-vit",
                    "training_file": file_id,
                    "hyperparameters": {"epochs": 2, "learning_rate": 0.005, "batch_size": 4},
                    "suffix": suffix,
                },
            )
            assert made.status_code == 201, made.text
            jobs.append(made.json()["id"])
        finished = [wait_until_finished(mine[1 - i], job_id, JOB_DEADLINE_S) for i, job_id in enumerate(jobs)]
        logs = [server.log() for server in replicas.servers]
        for job in finished:
            assert job["status"] == "succeeded", (job, mine[0].get(f"/v1/fine-tunes/{job['id']}/events").text)
            events = mine[0].get(f"/v1/fine-tunes/{job['id']}/events").json()["data"]
            running = [e for e in events if e["type"] == "status" and e["data"]["status"] == "running"]
            assert len(running) == 1, events  # claimed once
            assert [e["data"]["epoch"] for e in events if e["type"] == "epoch"] == [1, 2], events
            assert not [e for e in events if e["type"] == "resume"], events
            claims = [len(re.findall(rf"fine-tuning job {job['id']}: claimed by ", log)) for log in logs]
            assert sorted(claims) == [0, 1], claims  # by exactly one replica
            ran_on = "AB"[claims.index(1)]
            print(f"\n{job['id']} ({job['fine_tuned_model']}) trained on replica {ran_on}")

        for job in finished:
            model = job["fine_tuned_model"]
            for index in (0, 1):  # whichever replica trained it, both list and serve it to its tenant only
                listed = [m["id"] for m in mine[index].get("/v1/models").json()["data"]]
                assert model in listed, (index, listed)
                answer = predict(mine[index], model=model)
                assert answer.status_code == 200, (index, answer.text)
                assert {p["label"] for p in answer.json()["predictions"][0]} <= set(TINY_LABELS)
                assert answer.json()["usage"]["cost_micro"] == PRICE_MICRO  # its base's price, everywhere
                refused = predict(theirs[index], model=model)
                assert refused.status_code == 404, refused.text
                assert model not in [m["id"] for m in theirs[index].get("/v1/models").json()["data"]]
    finally:
        for http in mine + theirs:
            http.close()
