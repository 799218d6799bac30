"""Methods for endpoints the contract names but the gateway does not serve yet (admin, usage, files,
fine-tunes): the requests they put on the wire, checked against a real HTTP server, and how they
read the answers. When the gateway serves them, the same calls move to test_gateway.py."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from conftest import Reply, ScriptServer
from maas_client import AsyncClient, Client, ConflictError, FineTuneEvent, FineTuneJob
from maas_client.cli import main


@pytest.fixture
def client(script_server: ScriptServer) -> Iterator[Client]:
    with Client(script_server.base_url, "mk_admin", sleep=lambda s: None) as client:
        yield client


def test_admin_tenants_create_list_suspend(script_server: ScriptServer, client: Client) -> None:
    tenant = {"id": "ten_1", "name": "acme", "rate_limit_rps": 5, "allowed_models": ["tiny-vit"]}
    script_server.on("POST", "/v1/admin/tenants", Reply(201, tenant))
    script_server.on("GET", "/v1/admin/tenants", Reply(200, {"object": "list", "data": [tenant]}))
    script_server.on("POST", "/v1/admin/tenants/acme/suspend", Reply(200, {**tenant, "status": "suspended"}))
    created = client.admin.tenants.create("acme", rate_limit_rps=5, allowed_models=["tiny-vit"])
    assert created.name == "acme" and created.rate_limit_rps == 5.0 and created.allowed_models == ["tiny-vit"]
    assert script_server.requests[-1].json() == {
        "name": "acme",
        "rate_limit_rps": 5,
        "allowed_models": ["tiny-vit"],
    }
    assert [t.id for t in client.admin.tenants.list()] == ["ten_1"]
    assert client.admin.tenants.suspend("acme").status == "suspended"


def test_admin_keys_create_list_revoke(script_server: ScriptServer, client: Client) -> None:
    script_server.on(
        "POST",
        "/v1/admin/tenants/acme/keys",
        Reply(201, {"id": "key_1", "key": "mk_secret", "scopes": ["inference"]}),
    )
    script_server.on(
        "GET", "/v1/admin/tenants/acme/keys", Reply(200, {"data": [{"id": "key_1", "name": "ci"}]})
    )
    script_server.on("DELETE", "/v1/admin/keys/key_1", Reply(204))
    key = client.admin.keys.create("acme", name="ci", scopes=["inference"], expires_at="2027-01-01T00:00:00Z")
    assert key.id == "key_1" and key.key == "mk_secret" and "mk_secret" not in repr(key)
    assert script_server.requests[-1].json() == {
        "name": "ci",
        "scopes": ["inference"],
        "expires_at": "2027-01-01T00:00:00Z",
    }
    listed = client.admin.keys.list("acme")
    assert listed[0].name == "ci" and listed[0].key is None
    assert client.admin.keys.revoke("key_1") is None
    assert script_server.requests[-1].method == "DELETE"


def test_usage_get_sends_the_period_and_grouping(script_server: ScriptServer, client: Client) -> None:
    rows = [{"model": "tiny-vit", "day": "2026-11-27", "inputs": 3, "cost": 0.003}]
    script_server.on("GET", "/v1/usage", Reply(200, {"object": "list", "data": rows}))
    report = client.usage.get(start="2026-11-01", end="2026-12-01", group_by=["model", "day"])
    assert report.data == rows
    assert script_server.requests[-1].query == {
        "start": ["2026-11-01"],
        "end": ["2026-12-01"],
        "group_by": ["model,day"],
    }


def test_files_upload_list_delete(script_server: ScriptServer, client: Client) -> None:
    script_server.on("POST", "/v1/files", Reply(201, {"id": "file_1", "filename": "set.zip", "bytes": 6}))
    script_server.on("GET", "/v1/files", Reply(200, {"data": [{"id": "file_1"}]}))
    script_server.on("DELETE", "/v1/files/file_1", Reply(200, {"id": "file_1", "deleted": True}))
    uploaded = client.files.upload(io.BytesIO(b"PK\x03\x04zz"))
    assert uploaded.id == "file_1" and uploaded.bytes == 6
    sent = script_server.requests[-1]
    assert sent.headers["content-type"].startswith("multipart/form-data")
    assert b'name="purpose"' in sent.body and b"fine-tune" in sent.body
    assert b'name="file"' in sent.body and b"PK\x03\x04zz" in sent.body
    assert [f.id for f in client.files.list()] == ["file_1"]
    client.files.delete("file_1")
    assert script_server.requests[-1].path == "/v1/files/file_1"


def test_fine_tunes_create_get_list_events_cancel(script_server: ScriptServer, client: Client) -> None:
    job = {"id": "ft_1", "status": "queued", "base_model": "tiny-vit", "training_file": "file_1"}
    script_server.on("POST", "/v1/fine-tunes", Reply(201, job))
    script_server.on("GET", "/v1/fine-tunes/ft_1", Reply(200, job))
    script_server.on("GET", "/v1/fine-tunes", Reply(200, {"data": [job]}))
    script_server.on("GET", "/v1/fine-tunes/ft_1/events", Reply(200, {"data": [{"message": "queued"}]}))
    script_server.on(
        "POST",
        "/v1/fine-tunes/ft_1/cancel",
        Reply(200, {**job, "status": "cancelled"}),
        Reply(409, {"error": {}}),
    )
    created = client.fine_tunes.create(
        "tiny-vit", "file_1", hyperparameters={"epochs": 2, "learning_rate": 1e-3}, suffix="colors"
    )
    assert created == FineTuneJob.from_json(job) and not created.done
    assert script_server.requests[-1].json() == {
        "base_model": "tiny-vit",
        "training_file": "file_1",
        "hyperparameters": {"epochs": 2, "learning_rate": 1e-3},
        "suffix": "colors",
    }
    assert client.fine_tunes.get("ft_1").status == "queued"
    assert [j.id for j in client.fine_tunes.list()] == ["ft_1"]
    assert client.fine_tunes.events("ft_1") == [FineTuneEvent("queued")]
    assert client.fine_tunes.cancel("ft_1").done
    with pytest.raises(ConflictError):
        client.fine_tunes.cancel("ft_1")


def _script_a_job_that_runs_then_succeeds(script_server: ScriptServer) -> None:
    base = {"id": "ft_1", "base_model": "tiny-vit"}
    script_server.on(
        "GET",
        "/v1/fine-tunes/ft_1",
        Reply(200, {**base, "status": "queued"}),
        Reply(200, {**base, "status": "running"}),
        Reply(200, {**base, "status": "succeeded", "fine_tuned_model": "tiny-vit:colors"}),
    )
    events = [{"id": f"ev_{i}", "message": m} for i, m in enumerate(["queued", "epoch 1/2", "epoch 2/2"])]
    script_server.on(
        "GET",
        "/v1/fine-tunes/ft_1/events",
        Reply(200, {"data": events[:1]}),
        Reply(200, {"data": events[:2]}),
        Reply(200, {"data": events}),
    )


def test_fine_tunes_wait_polls_until_done_and_reports_new_events(script_server: ScriptServer) -> None:
    _script_a_job_that_runs_then_succeeds(script_server)
    sleeps: list[float] = []
    seen: list[tuple[str, list[str]]] = []
    with Client(script_server.base_url, "k", sleep=sleeps.append) as client:
        job = client.fine_tunes.wait(
            "ft_1", poll_interval=7, progress=lambda j, evs: seen.append((j.status, [e.message for e in evs]))
        )
    assert job.status == "succeeded" and job.fine_tuned_model == "tiny-vit:colors"
    assert seen == [("queued", ["queued"]), ("running", ["epoch 1/2"]), ("succeeded", ["epoch 2/2"])]
    assert sleeps == [7, 7]


def test_fine_tunes_wait_gives_up_after_its_timeout(script_server: ScriptServer) -> None:
    script_server.on("GET", "/v1/fine-tunes/ft_1", Reply(200, {"id": "ft_1", "status": "running"}))
    with Client(script_server.base_url, "k", sleep=lambda s: None) as client, pytest.raises(TimeoutError):
        client.fine_tunes.wait("ft_1", poll_interval=1, timeout=0)


@pytest.mark.anyio
async def test_async_fine_tunes_wait_and_admin(script_server: ScriptServer) -> None:
    _script_a_job_that_runs_then_succeeds(script_server)
    script_server.on("GET", "/v1/admin/tenants", Reply(200, {"data": [{"name": "acme"}]}))
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    async with AsyncClient(script_server.base_url, "k", sleep=record) as client:
        job = await client.fine_tunes.wait("ft_1", poll_interval=2)
        assert [t.name for t in await client.admin.tenants.list()] == ["acme"]
    assert job.done and sleeps == [2, 2]
    assert not script_server.attempts("GET", "/v1/fine-tunes/ft_1/events")  # no listener, no event polling


def test_cli_follows_a_fine_tune_job(script_server: ScriptServer, capsys: pytest.CaptureFixture[str]) -> None:
    _script_a_job_that_runs_then_succeeds(script_server)
    argv = [
        "--base-url",
        script_server.base_url,
        "--api-key",
        "k",
        "fine-tunes",
        "follow",
        "ft_1",
        "--interval",
        "0",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["queued", "[ft_1] queued"] and "epoch 2/2" in out and "[ft_1] succeeded" in out
    assert '"fine_tuned_model": "tiny-vit:colors"' in out[-1]
