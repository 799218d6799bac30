"""Text-classification fine-tuning through the HTTP API, in-process, on SQLite and PostgreSQL:
upload JSONL or CSV, train the tiny BERT (full and LoRA), serve the result to its tenant only at
once, with the training metered; a dataset of the other kind is refused up front."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.api.jobs import tenant_key, upload_file
from tests.api.test_fine_tuning import training_cost, training_events, wait_for
from tests.conftest import Gateway, write_manifest, write_tiny_vit
from tests.training.zips import colour_dataset

pytestmark = pytest.mark.anyio
REVIEWS = [
    *(("a good movie", "positive"), ("a great movie", "positive"), ("good and great", "positive")),
    *(("alice was good", "positive"), ("bob visited a great movie", "positive")),
    *(("a bad movie", "negative"), ("a terrible movie", "negative"), ("bad and terrible", "negative")),
    *(("alice was bad", "negative"), ("bob visited a terrible movie", "negative")),
]


def tiny_distilbert(folder: Path) -> Path:
    """A small DistilBERT classifier (random weights): its attention layers are `q_lin`/`v_lin`."""
    from transformers import BertTokenizerFast, DistilBertConfig, DistilBertForSequenceClassification

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"]
    BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}).save_pretrained(folder)
    config = DistilBertConfig(vocab_size=len(vocab), dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture
def models_dir(tmp_path: Path, tiny_vit_dir: Path, tiny_text_classifier_dir: Path) -> Path:
    """The tiny ViT and the tiny BERT sentiment classifier, both priced for training, and a tiny
    DistilBERT."""
    folder = tmp_path / "models"
    folder.mkdir()
    price = "{per_image: 0.001, per_training_sample: 0.0001, per_training_second: 0.01}"
    write_tiny_vit(folder, tiny_vit_dir, price=price)
    write_manifest(
        folder,
        "tiny-sentiment",
        f"""
        name: tiny-sentiment
        task: text-classification
        source: {tiny_text_classifier_dir}
        batching: {{max_batch_size: 8, max_delay_ms: 2}}
        price: {price}
        """,
    )
    source = tiny_distilbert(tmp_path / "tiny-distilbert")
    write_manifest(
        folder, "tiny-distilbert", f"name: tiny-distilbert\ntask: text-classification\nsource: {source}\n"
    )
    return folder


def reviews_jsonl() -> bytes:
    return "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in REVIEWS).encode()


def reviews_csv() -> bytes:
    return ("text,label\r\n" + "".join(f'"{t}",{label}\r\n' for t, label in REVIEWS)).encode()


async def upload(http: httpx.AsyncClient, name: str, data: bytes) -> httpx.Response:
    return await upload_file(http, name, data, "fine-tune", "application/octet-stream")


async def fine_tune(http: httpx.AsyncClient, file_id: str, **extra: object) -> httpx.Response:
    body = {
        "base_model": "tiny-sentiment",
        "training_file": file_id,
        "hyperparameters": {"epochs": 2, "learning_rate": 0.01, "batch_size": 4},
        "suffix": "reviews",
        **extra,
    }
    return await http.post("/v1/fine-tunes", json=body)


async def test_a_text_job_trains_and_its_model_answers_its_tenant_only(gateway: Gateway) -> None:
    async with gateway.client() as admin:
        acme, other = await tenant_key(admin, "acme"), await tenant_key(admin, "other")
    async with gateway.client(acme) as mine, gateway.client(other) as theirs:
        made = await upload(mine, "reviews.jsonl", reviews_jsonl())
        assert made.status_code == 201, made.text
        file = made.json()
        assert file["summary"] == {
            "kind": "text",
            "format": "jsonl",
            "labels": ["negative", "positive"],
            "train": {"negative": 5, "positive": 5},
            "validation": {},
            "examples": 10,
        }
        created = await fine_tune(mine, file["id"])
        assert created.status_code == 201, created.text
        job = await wait_for(mine, created.json()["id"], {"succeeded", "failed", "cancelled"})
        assert job["status"] == "succeeded", job
        assert job["metrics"]["train_samples"] == 8 and job["metrics"]["validation_samples"] == 2
        assert job["usage"]["trained_samples"] == 2 * 8
        model = job["fine_tuned_model"]

        shown = (await mine.get(f"/v1/models/{model}")).json()
        assert (shown["task"], shown["status"]) == ("text-classification", "ready")
        texts = ["a great movie", "alice was terrible"]
        served = await mine.post(f"/v1/models/{model}/predict", json={"inputs": texts})
        assert served.status_code == 200, served.text
        predictions = served.json()["predictions"]
        assert len(predictions) == 2  # the dataset's labels, not the base's three sentiments
        assert all({p["label"] for p in ranked} == {"negative", "positive"} for ranked in predictions)

        stolen = await theirs.post(f"/v1/models/{model}/predict", json={"inputs": texts})
        assert stolen.status_code == 404
        assert (await theirs.get(f"/v1/models/{model}")).status_code == 404

        usage = (await mine.get("/v1/usage", params={"group_by": "model"})).json()["data"]
        trained = next(u for u in usage if u["kind"] == "training")
        assert (trained["model"], trained["requests"], trained["inputs"]) == ("tiny-sentiment", 1, 16)
        assert trained["cost_micro"] == training_cost(16, trained["compute_seconds"])
        assert next(u for u in usage if u["model"] == model)["inputs"] == 2
    assert [e.request_id for e in training_events(gateway.app)] == [job["id"]]


async def test_a_csv_dataset_trains_a_lora_adapter_served_over_its_base(gateway: Gateway) -> None:
    async with gateway.client() as admin:
        acme = await tenant_key(admin, "acme")
    async with gateway.client(acme) as mine:
        made = await upload(mine, "input-0", reviews_csv())  # no suffix: told by its header
        assert made.status_code == 201, made.text
        assert (made.json()["summary"]["format"], made.json()["summary"]["examples"]) == ("csv", 10)
        held = await upload(mine, "held.jsonl", reviews_jsonl())
        created = await fine_tune(mine, made.json()["id"], method="lora", validation_file=held.json()["id"])
        assert created.status_code == 201, created.text
        job = await wait_for(mine, created.json()["id"], {"succeeded", "failed", "cancelled"})
        assert job["status"] == "succeeded", job
        assert job["metrics"]["train_samples"] == job["metrics"]["validation_samples"] == 10
        model = job["fine_tuned_model"]
        folder = gateway.app.state.gateway.settings.data_dir / "models" / model
        assert (folder / "adapter_config.json").exists() and not (folder / "model.safetensors").exists()
        served = await mine.post(
            f"/v1/models/{model}/predict", json={"inputs": ["good"]}, params={"top_k": 1}
        )
        assert served.status_code == 200, served.text
        assert served.json()["predictions"][0][0]["label"] in {"negative", "positive"}


async def test_a_dataset_of_the_other_kind_is_refused_naming_both(gateway: Gateway) -> None:
    async with gateway.client() as admin:
        acme = await tenant_key(admin, "acme")
    async with gateway.client(acme) as mine:
        text_id = (await upload(mine, "reviews.jsonl", reviews_jsonl())).json()["id"]
        zip_made = await upload(mine, "colours.zip", colour_dataset(per_label=6))
        assert zip_made.json()["summary"]["examples"] == zip_made.json()["summary"]["images"] == 12
        zip_id = zip_made.json()["id"]

        on_images = await fine_tune(mine, text_id, base_model="tiny-vit")
        assert on_images.status_code == 422
        message = on_images.json()["error"]["message"]
        assert text_id in message and "'tiny-vit'" in message and "image-classification" in message
        assert "text examples" in message

        on_text = await fine_tune(mine, zip_id)
        assert on_text.status_code == 422
        message = on_text.json()["error"]["message"]
        assert zip_id in message and "'tiny-sentiment'" in message and "text-classification" in message

        mixed = await fine_tune(mine, text_id, validation_file=zip_id)
        assert mixed.status_code == 422 and zip_id in mixed.json()["error"]["message"]

        no_lora = await fine_tune(mine, text_id, base_model="tiny-distilbert", method="lora")
        assert no_lora.status_code == 422
        assert (
            "query/value" in no_lora.json()["error"]["message"]
            and "'full'" in no_lora.json()["error"]["message"]
        )
        assert (await mine.get("/v1/fine-tunes")).json()["data"] == []


async def test_a_bad_line_is_refused_at_upload_by_number_and_nothing_is_kept(gateway: Gateway) -> None:
    async with gateway.client() as admin:
        acme = await tenant_key(admin, "acme")
    async with gateway.client(acme) as mine:
        data = reviews_jsonl() + b'{"text": "fine", "label": 3}\n'
        refused = await upload(mine, "reviews.jsonl", data)
        assert refused.status_code == 422
        assert refused.json()["error"]["message"] == 'line 11: "label" must be a string, got int 3'
        assert (await mine.get("/v1/files")).json()["data"] == []


async def test_a_restarted_gateway_serves_the_text_model_again_as_text(
    settings: Settings, database_url: str
) -> None:
    settings = settings.model_copy(update={"database_url": database_url})
    app = create_app(settings)
    async with app.router.lifespan_context(app), Gateway(app).client() as http:
        file_id = (await upload(http, "reviews.jsonl", reviews_jsonl())).json()["id"]
        created = await fine_tune(http, file_id, hyperparameters={"epochs": 1, "batch_size": 4})
        job = await wait_for(http, created.json()["id"], {"succeeded", "failed", "cancelled"})
        assert job["status"] == "succeeded", job
    model = job["fine_tuned_model"]

    restarted = create_app(settings)  # registered again at start-up, with its base's task
    async with restarted.router.lifespan_context(restarted), Gateway(restarted).client() as http:
        await restarted.state.gateway.registry.preload_done.wait()
        assert (await http.get(f"/v1/models/{model}")).json()["task"] == "text-classification"
        served = await http.post(f"/v1/models/{model}/predict", json={"inputs": ["bob was bad"]})
        assert served.status_code == 200, served.text
        assert {p["label"] for p in served.json()["predictions"][0]} == {"negative", "positive"}
