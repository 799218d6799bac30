"""Files and fine-tuning through the client and its CLI, against the real `maas serve` process:
a tiny ViT fine-tuned on a tiny colour dataset, so that a job finishes in seconds."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ADMIN_KEY, png, unique
from maas_client import (
    AsyncClient,
    Client,
    ConflictError,
    FineTuneEvent,
    FineTuneJob,
    InvalidInputError,
    NotFoundError,
)
from maas_client.cli import main

from tests.e2e.conftest import Server
from tests.training.zips import build_zip, colour_dataset

pytestmark = pytest.mark.e2e
FAST = {"epochs": 2, "batch_size": 4, "learning_rate": 0.01}
POLL_S = 0.2  # how often `wait` asks; the job's own pace decides how long it takes


def tenant_client(gateway: Server, prefix: str) -> Client:
    """A client with the key of a new tenant (default scopes: inference and fine-tuning)."""
    name = unique(prefix)
    with Client(gateway.base_url, ADMIN_KEY) as admin:
        admin.admin.tenants.create(name)
        key = admin.admin.keys.create(name).key
    return Client(gateway.base_url, key)


@pytest.fixture
def tenant(gateway: Server) -> Iterator[Client]:
    with tenant_client(gateway, "tuner") as client:
        yield client


class Progress:
    """A `progress` callback that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[FineTuneJob, list[FineTuneEvent]]] = []

    def __call__(self, job: FineTuneJob, events: list[FineTuneEvent]) -> None:
        self.calls.append((job, events))

    @property
    def events(self) -> list[FineTuneEvent]:
        return [event for _, new in self.calls for event in new]


def test_files_upload_list_get_delete(tenant: Client, tmp_path: Path) -> None:
    path = tmp_path / "colours.zip"
    path.write_bytes(colour_dataset(per_label=6))
    from_path = tenant.files.upload(path)
    assert from_path.id.startswith("file_") and from_path.filename == "colours.zip"
    assert from_path.bytes == path.stat().st_size and from_path.purpose == "fine-tune"
    assert from_path.labels == ["blue", "red"] and from_path.summary and from_path.summary["images"] == 12
    with path.open("rb") as opened:
        from_file = tenant.files.upload(opened)
    from_bytes = tenant.files.upload(colour_dataset(per_label=5, labels=("red", "green", "blue")))
    assert from_bytes.labels == ["blue", "green", "red"] and from_bytes.filename
    assert {f.id for f in tenant.files.list()} == {from_path.id, from_file.id, from_bytes.id}
    assert tenant.files.get(from_file.id) == from_file
    assert tenant.files.delete(from_file.id) is None
    with pytest.raises(NotFoundError):
        tenant.files.get(from_file.id)
    with pytest.raises(NotFoundError):
        tenant.files.delete(from_file.id)
    assert {f.id for f in tenant.files.list()} == {from_path.id, from_bytes.id}
    with pytest.raises(InvalidInputError) as caught:  # one label only: nothing to learn
        tenant.files.upload(build_zip({f"red/{i}.png": png() for i in range(6)}))
    assert caught.value.status_code == 422 and caught.value.message


def test_fine_tune_create_wait_with_progress_then_serve_to_its_tenant_only(
    gateway: Server, tenant: Client
) -> None:
    training = tenant.files.upload(io.BytesIO(colour_dataset(per_label=8)))
    job = tenant.fine_tunes.create(
        "tiny-vit", training.id, hyperparameters=FAST, suffix="colours", idempotency_key=unique("ft")
    )
    assert job.id.startswith("ftjob") and job.status in ("queued", "running") and not job.done
    assert job.base_model == "tiny-vit" and job.training_file == training.id and job.method == "full"
    assert job.hyperparameters and job.hyperparameters["epochs"] == 2 and job.suffix == "colours"

    progress = Progress()
    done = tenant.fine_tunes.wait(job.id, poll_interval=POLL_S, timeout=300, progress=progress)
    assert done.status == "succeeded", (done.error, tenant.fine_tunes.events(job.id))
    assert done.fine_tuned_model and "colours" in done.fine_tuned_model and done.finished_at
    assert done.progress.epochs_done == done.progress.epochs_total == 2
    assert done.progress.steps_total and done.progress.steps_done == done.progress.steps_total
    assert done.progress.fraction == 1.0 and done.started_at and done.error is None
    assert done.metrics and "validation_accuracy" in done.metrics and len(done.metrics["epochs"]) == 2
    assert done.usage.device_seconds > 0 and done.usage.trained_samples > 0

    # every event reported once, in order, the last call seeing the finished job
    events = tenant.fine_tunes.events(job.id)
    assert [e.id for e in progress.events] == [e.id for e in events] and progress.calls[-1][0] == done
    assert [e.data["status"] for e in events if e.type == "status"] == ["queued", "running", "succeeded"]
    assert sum(e.type == "epoch" for e in events) == 2
    assert tenant.fine_tunes.get(job.id) == done
    assert job.id in {j.id for j in tenant.fine_tunes.list()}
    with pytest.raises(ConflictError):
        tenant.fine_tunes.cancel(job.id)

    model = done.fine_tuned_model
    answer = tenant.predict(model, [png((220, 30, 30)), png((30, 40, 220))], top_k=2)
    assert all({g.label for g in ranked} == {"red", "blue"} for ranked in answer.predictions)
    mine = {m.id: m for m in tenant.models.list()}
    assert mine[model].owned_by == "tenant" and mine[model].status == "ready"
    with tenant_client(gateway, "other") as other:
        assert model not in {m.id for m in other.models.list()}
        with pytest.raises(NotFoundError):
            other.predict(model, png())
        with pytest.raises(NotFoundError):
            other.fine_tunes.get(job.id)


def test_a_lora_job_at_high_priority_is_served_and_billed_as_training(tenant: Client) -> None:
    training = tenant.files.upload(colour_dataset(per_label=8))
    job = tenant.fine_tunes.create(
        "tiny-vit",
        training.id,
        method="lora",
        priority="high",
        hyperparameters={**FAST, "lora_rank": 4, "lora_alpha": 8},
    )
    assert (job.method, job.priority) == ("lora", "high")
    assert job.hyperparameters and job.hyperparameters["lora_rank"] == 4
    done = tenant.fine_tunes.wait(job.id, poll_interval=POLL_S, timeout=300)
    assert done.status == "succeeded" and done.fine_tuned_model, (
        done.error,
        tenant.fine_tunes.events(job.id),
    )
    answer = tenant.predict(done.fine_tuned_model, png((220, 30, 30)), top_k=2)
    assert {g.label for g in answer.predictions[0]} == {"red", "blue"}

    rows = tenant.usage.get(group_by="model").data
    trained = [r for r in rows if r.kind == "training"]
    assert [(r.model, r.requests, r.inputs) for r in trained] == [("tiny-vit", 1, done.usage.trained_samples)]
    assert trained[0].compute_seconds > 0
    with pytest.raises(InvalidInputError):
        tenant.fine_tunes.create("tiny-vit", training.id, priority="urgent")


def test_fine_tune_create_is_idempotent_and_refuses_what_cannot_run(tenant: Client) -> None:
    training = tenant.files.upload(colour_dataset(per_label=5))
    key = unique("once")
    first = tenant.fine_tunes.create("tiny-vit", training.id, hyperparameters=FAST, idempotency_key=key)
    again = tenant.fine_tunes.create("tiny-vit", training.id, hyperparameters=FAST, idempotency_key=key)
    assert again.id == first.id  # a retried create never queues a second job
    assert tenant.fine_tunes.wait(first.id, poll_interval=POLL_S, timeout=300).status == "succeeded"
    with pytest.raises(NotFoundError):
        tenant.fine_tunes.create("tiny-vit", "file_nope")
    with pytest.raises(NotFoundError):
        tenant.fine_tunes.create("no-such-model", training.id)
    with pytest.raises(InvalidInputError):
        tenant.fine_tunes.create("all-minilm-l6-v2", training.id)  # not an image classifier
    with pytest.raises(InvalidInputError):
        tenant.fine_tunes.create("tiny-vit", training.id, hyperparameters={"epochs": 0})
    with pytest.raises(NotFoundError):
        tenant.fine_tunes.events("ftjob_nope")


def test_cancel_a_long_job(tenant: Client) -> None:
    training = tenant.files.upload(colour_dataset(per_label=5))
    job = tenant.fine_tunes.create("tiny-vit", training.id, hyperparameters={"epochs": 1000})
    cancelling = tenant.fine_tunes.cancel(job.id)  # queued: at once; running: at its next step
    assert cancelling.id == job.id and cancelling.status in ("queued", "running", "cancelled")
    cancelled = tenant.fine_tunes.wait(job.id, poll_interval=POLL_S, timeout=300)
    assert cancelled.status == "cancelled" and cancelled.done and cancelled.fine_tuned_model is None
    assert cancelled.progress.epochs_done < 1000


def test_cli_follows_a_fine_tune_job_to_its_end(
    gateway: Server, tenant: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    training = tenant.files.upload(colour_dataset(per_label=5))
    job = tenant.fine_tunes.create("tiny-vit", training.id, hyperparameters=FAST, suffix="cli")
    common = ["--base-url", gateway.base_url, "--api-key", tenant.api_key or ""]
    assert main([*common, "fine-tunes", "follow", job.id, "--interval", str(POLL_S)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == f"[{job.id}] succeeded" and any(line.endswith("job queued") for line in out)
    summary = json.loads(out[-1])
    assert summary["id"] == job.id and summary["status"] == "succeeded"
    assert summary["fine_tuned_model"] and summary["progress"]["epochs_done"] == 2

    long = tenant.fine_tunes.create("tiny-vit", training.id, hyperparameters={"epochs": 1000})
    tenant.fine_tunes.cancel(long.id)
    assert main([*common, "fine-tunes", "follow", long.id, "--interval", str(POLL_S)]) == 1
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["status"] == "cancelled"
    assert main([*common, "fine-tunes", "follow", "ftjob_nope"]) == 1
    assert "not_found" in capsys.readouterr().err


@pytest.mark.anyio
async def test_async_files_and_fine_tunes(gateway: Server) -> None:
    with tenant_client(gateway, "async-tuner") as sync:
        key = sync.api_key
    async with AsyncClient(gateway.base_url, key) as client:
        uploaded = await client.files.upload(colour_dataset(per_label=5))
        assert uploaded.labels == ["blue", "red"] and await client.files.get(uploaded.id) == uploaded
        spare = await client.files.upload(colour_dataset(per_label=5))
        await client.files.delete(spare.id)
        assert [f.id for f in await client.files.list()] == [uploaded.id]

        job = await client.fine_tunes.create("tiny-vit", uploaded.id, hyperparameters=FAST, suffix="async")
        progress = Progress()
        done = await client.fine_tunes.wait(job.id, poll_interval=POLL_S, timeout=300, progress=progress)
        assert done.status == "succeeded" and done.fine_tuned_model
        assert [e.id for e in progress.events] == [e.id for e in await client.fine_tunes.events(job.id)]
        assert (await client.fine_tunes.get(job.id)).fine_tuned_model == done.fine_tuned_model
        assert [j.id for j in await client.fine_tunes.list()] == [job.id]
        answer = await client.predict(done.fine_tuned_model, png())
        assert answer.predictions[0][0].label in ("red", "blue")

        long = await client.fine_tunes.create("tiny-vit", uploaded.id, hyperparameters={"epochs": 1000})
        await client.fine_tunes.cancel(long.id)
        assert (
            await client.fine_tunes.wait(long.id, poll_interval=POLL_S, timeout=300)
        ).status == "cancelled"
        with pytest.raises(ConflictError):
            await client.fine_tunes.cancel(long.id)


REVIEWS = [  # five of each label: the gateway's default minimum
    (f"{who} visited a {word} movie", label)
    for who in ("alice", "bob", "the", "a", "paris")
    for word, label in (("great", "positive"), ("bad", "negative"))
]


def test_a_text_dataset_uploads_unchanged_and_fine_tunes_a_text_classifier(
    tenant: Client, tmp_path: Path
) -> None:
    lines = "".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in REVIEWS)
    path = tmp_path / "reviews.jsonl"
    path.write_text(lines, encoding="utf-8")
    uploaded = tenant.files.upload(path)
    assert uploaded.labels == ["negative", "positive"] and uploaded.examples == 10
    assert uploaded.summary and (uploaded.summary["kind"], uploaded.summary["format"]) == ("text", "jsonl")
    csv_text = "text,label\n" + "".join(f"{text},{label}\n" for text, label in REVIEWS)
    assert tenant.files.upload(csv_text.encode()).examples == 10  # bytes: told by the header
    with pytest.raises(InvalidInputError) as caught:
        tenant.files.upload(io.BytesIO(lines.encode() + b'{"text": "no label"}\n'))
    assert caught.value.status_code == 422 and caught.value.message == 'line 11: missing "label"'

    job = tenant.fine_tunes.create("tiny-sentiment", uploaded.id, hyperparameters=FAST, suffix="reviews")
    done = tenant.fine_tunes.wait(job.id, poll_interval=POLL_S, timeout=300)
    assert done.status == "succeeded", (done.error, tenant.fine_tunes.events(job.id))
    assert done.fine_tuned_model
    ranked = tenant.classify_text(done.fine_tuned_model, ["alice visited a good movie"]).predictions
    assert {p.label for p in ranked[0]} == {"negative", "positive"}
    with pytest.raises(InvalidInputError) as mismatch:
        tenant.fine_tunes.create("tiny-vit", uploaded.id)
    assert uploaded.id in mismatch.value.message and "'tiny-vit'" in mismatch.value.message
