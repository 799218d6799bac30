"""Batch jobs through the client (sync and asyncio), against the real `maas serve` process: a
JSONL of images through the tiny ViT, results in input order with an error line, another
tenant's job not found."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from conftest import ADMIN_KEY, png, unique
from maas_client import AsyncClient, Batch, Client, ConflictError, InvalidInputError, NotFoundError
from maas_client.cli import main

from tests.e2e.conftest import Server
from tests.training.zips import build_zip

pytestmark = pytest.mark.e2e
POLL_S = 0.2


def tenant_key(gateway: Server, prefix: str) -> str:
    name = unique(prefix)
    with Client(gateway.base_url, ADMIN_KEY) as admin:
        admin.admin.tenants.create(name)
        return admin.admin.keys.create(name).key


def jsonl(images: list[bytes]) -> bytes:
    return b"".join(json.dumps({"inputs": base64.b64encode(i).decode()}).encode() + b"\n" for i in images)


def test_batch_create_wait_results_and_privacy(gateway: Server) -> None:
    with Client(gateway.base_url, tenant_key(gateway, "batcher")) as mine:
        with pytest.raises(InvalidInputError) as refused:
            mine.files.upload(b'{"inputs": ""}\n', purpose="batch")
        assert "line 1" in refused.value.message
        file = mine.files.upload(jsonl([png(), b"no image", png((30, 40, 220))]), purpose="batch")
        assert file.purpose == "batch" and file.summary == {"format": "jsonl", "inputs": 3}
        job = mine.batches.create("tiny-vit", file.id)
        assert isinstance(job, Batch) and job.id.startswith("batch_") and not job.done
        done = mine.batches.wait(job.id, poll_interval=POLL_S, timeout=120)
        assert done.status == "completed" and done.finished_at
        assert (done.counts.total, done.counts.completed, done.counts.failed) == (3, 2, 1)
        lines = mine.batches.results(job.id)
        assert [line["index"] for line in lines] == [0, 1, 2]
        assert "predictions" in lines[0] and lines[1]["error"]["type"] == "invalid_input"
        assert [b.id for b in mine.batches.list()] == [job.id] and mine.batches.get(job.id) == done
        with pytest.raises(ConflictError):
            mine.batches.cancel(job.id)
    with Client(gateway.base_url, tenant_key(gateway, "other")) as theirs:
        assert theirs.batches.list() == []
        with pytest.raises(NotFoundError):
            theirs.batches.get(job.id)
        with pytest.raises(NotFoundError):
            theirs.batches.results(job.id)


@pytest.mark.anyio
async def test_async_batches(gateway: Server) -> None:
    async with AsyncClient(gateway.base_url, tenant_key(gateway, "asyncbatch")) as client:
        file = await client.files.upload(jsonl([png()] * 2), purpose="batch")
        job = await client.batches.create("tiny-vit", file.id)
        done = await client.batches.wait(job.id, poll_interval=POLL_S, timeout=120)
        assert done.counts.completed == 2 and [j.id for j in await client.batches.list()] == [job.id]
        assert [line["index"] for line in await client.batches.results(job.id)] == [0, 1]
        assert (await client.batches.get(job.id)).status == "completed"


def test_the_cli_uploads_creates_waits_and_writes_results(
    gateway: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--base-url", gateway.base_url, "--api-key", tenant_key(gateway, "clibatch")]
    inputs = tmp_path / "photos.zip"
    inputs.write_bytes(build_zip({"b.png": png(), "a.png": png((30, 40, 220))}))
    assert main([*common, "files", "upload", str(inputs), "--purpose", "batch", "--json"]) == 0
    file_id = json.loads(capsys.readouterr().out)["id"]
    assert (
        main(
            [*common, "batches", "create", "tiny-vit", file_id, "--wait", "--interval", str(POLL_S), "--json"]
        )
        == 0
    )
    job = json.loads(capsys.readouterr().out)
    assert job["status"] == "completed" and job["counts"]["completed"] == 2
    assert main([*common, "batches", "list"]) == 0
    assert job["id"] in capsys.readouterr().out
    written = tmp_path / "results.jsonl"
    assert main([*common, "batches", "results", job["id"], "-o", str(written)]) == 0
    capsys.readouterr()
    assert [json.loads(line)["input"] for line in written.read_text().splitlines()] == ["b.png", "a.png"]
    assert main([*common, "batches", "cancel", job["id"]]) == 1  # finished already: the gateway's 409
    assert "conflict" in capsys.readouterr().err
