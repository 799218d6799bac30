"""The text and image-feature tasks through the HTTP API (predict route), on small real models
built from their configs (random weights: shapes, batching and order, not accuracy): each answer
is the transformers pipeline's own (or, for image features, the same as one image at a time),
concurrent requests share forward passes, and bad inputs are refused with a 4xx."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.serving.runtime.image_features import ImageFeatureExtractionAdapter
from service.serving.runtime.text_classification import TextClassificationAdapter
from service.serving.runtime.token_classification import TokenClassificationAdapter
from tests.api.conftest import Gate
from tests.conftest import TINY_SENTIMENTS, image_bytes, write_manifest

pytestmark = pytest.mark.anyio

TEXTS = ["alice went to paris", "a great movie", "bob visited london and paris", "bad"]
SENTIMENT = "/v1/models/tiny-sentiment/predict"
NER = "/v1/models/tiny-ner/predict"
FEATURES = "/v1/models/tiny-features/predict"


@pytest.fixture(autouse=True)
def task_models(
    models_dir: Path,
    tiny_text_classifier_dir: Path,
    tiny_token_classifier_dir: Path,
    tiny_vit_features_dir: Path,
) -> None:
    """The three task models next to the suite's tiny ViT, priced per input like it, in float32 so
    that their answers can be compared with the pipeline's own."""
    for name, task, source in [
        ("tiny-sentiment", "text-classification", tiny_text_classifier_dir),
        ("tiny-ner", "token-classification", tiny_token_classifier_dir),
        ("tiny-features", "image-feature-extraction", tiny_vit_features_dir),
    ]:
        write_manifest(
            models_dir,
            name,
            f"""
            name: {name}
            task: {task}
            source: {source}
            dtype: float32  # compared with the float32 pipeline below; auto may pick bfloat16
            batching: {{max_batch_size: 8, max_delay_ms: 2}}
            price: {{per_image: 0.001}}
            """,
        )


def pipeline_of(task: str, folder: Path, **kwargs: Any) -> Any:
    from transformers import pipeline

    return pipeline(task, model=str(folder), device="cpu", **kwargs)


async def test_text_classification_answers_ranked_labels_per_text_as_the_pipeline_does(
    client: httpx.AsyncClient, tiny_text_classifier_dir: Path
) -> None:
    response = await client.post(SENTIMENT, params={"top_k": 2}, json={"inputs": TEXTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "prediction" and body["usage"]["inputs"] == len(TEXTS)
    assert len(body["predictions"]) == len(TEXTS)
    reference = pipeline_of("text-classification", tiny_text_classifier_dir, top_k=None)
    for text, ranked in zip(TEXTS, body["predictions"], strict=True):
        expected = reference([text])[0][:2]  # one text at a time: the pipeline's own loop
        assert [p["label"] for p in ranked] == [e["label"] for e in expected]
        assert [p["score"] for p in ranked] == pytest.approx([e["score"] for e in expected], abs=1e-5)
    every = (await client.post(SENTIMENT, json={"inputs": "good"})).json()["predictions"][0]
    assert sorted(p["label"] for p in every) == sorted(TINY_SENTIMENTS)  # top_k 5 > 3 classes
    assert [p["score"] for p in every] == sorted((p["score"] for p in every), reverse=True)
    assert sum(p["score"] for p in every) == pytest.approx(1.0, abs=1e-4)
    model = (await client.get("/v1/models/tiny-sentiment")).json()
    assert model["task"] == "text-classification" and model["labels"] == len(TINY_SENTIMENTS)


async def test_token_classification_answers_the_pipelines_simple_entities_per_text(
    client: httpx.AsyncClient, tiny_token_classifier_dir: Path
) -> None:
    response = await client.post(NER, json={"inputs": TEXTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "predictions" not in body and len(body["entities"]) == len(TEXTS)
    assert body["usage"]["inputs"] == len(TEXTS)
    reference = pipeline_of("token-classification", tiny_token_classifier_dir, aggregation_strategy="simple")
    for text, entities in zip(TEXTS, body["entities"], strict=True):
        expected = reference(text)
        assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in entities] == [
            (e["entity_group"], e["word"], e["start"], e["end"]) for e in expected
        ]
        assert [e["score"] for e in entities] == pytest.approx(
            [float(e["score"]) for e in expected], abs=1e-5
        )
        for entity in entities:
            assert set(entity) == {"entity_group", "score", "word", "start", "end"}
            assert text[entity["start"] : entity["end"]].lower() == entity["word"]


async def test_image_feature_extraction_answers_one_unit_vector_per_image(client: httpx.AsyncClient) -> None:
    images = [
        image_bytes("PNG", (40, 30), (200, 30, 30)),
        image_bytes("JPEG", (64, 96), (30, 200, 30)),
        image_bytes("PNG", (17, 23), (30, 30, 200)),
    ]
    files = [("file", (f"{i}.img", data, "")) for i, data in enumerate(images)]
    response = await client.post(FEATURES, files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "predictions" not in body and body["usage"]["inputs"] == len(images)
    vectors = body["embeddings"]
    assert [len(v) for v in vectors] == [24, 24, 24]
    assert all(math.isclose(math.hypot(*v), 1.0, abs_tol=1e-4) for v in vectors)
    assert vectors[0] != vectors[1]
    for data, batched in zip(images, vectors, strict=True):  # the same as one image at a time
        single = (await client.post(FEATURES, content=data)).json()["embeddings"][0]
        assert single == pytest.approx(batched, abs=1e-4)


@pytest.fixture
def gates(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Gate]]:
    """One gate per task adapter, open until a test closes it."""
    gates: dict[str, Gate] = {}
    for name, adapter in [
        ("tiny-sentiment", TextClassificationAdapter),
        ("tiny-ner", TokenClassificationAdapter),
        ("tiny-features", ImageFeatureExtractionAdapter),
    ]:
        gates[name] = Gate()
        gates[name].hold(adapter, monkeypatch)
    yield gates
    for gate in gates.values():
        gate.open.set()


def _bodies(model: str, count: int) -> list[dict[str, Any]]:
    if model == "tiny-features":
        return [{"content": image_bytes("PNG", (20 + i, 20), (40 * i, 90, 10))} for i in range(count)]
    return [{"json": {"inputs": [TEXTS[i]]}} for i in range(count)]


@pytest.mark.parametrize("model", ["tiny-sentiment", "tiny-ner", "tiny-features"])
async def test_concurrent_requests_share_a_forward_pass_and_each_gets_its_own_answer(
    client: httpx.AsyncClient, gates: dict[str, Gate], model: str
) -> None:
    path = f"/v1/models/{model}/predict"
    bodies = _bodies(model, 4)
    alone = [(await client.post(path, **body)).json() for body in bodies]  # one request at a time
    gate = gates[model]
    answers = [r.json() for r in await gate.one_then_the_rest(client, model, bodies)]
    assert [len(b) for b in gate.batches] == [1, 3]  # the three waiting requests: one forward pass
    for mine, single in zip(answers, alone, strict=True):
        assert_same_answer(mine, single)


def assert_same_answer(mine: dict[str, Any], single: dict[str, Any]) -> None:
    """The same outputs, up to float noise (a padded batch computes in another order)."""
    (key,) = {"predictions", "entities", "embeddings"} & set(single)
    assert len(mine[key]) == len(single[key]) == 1
    (got,), (want,) = mine[key], single[key]
    if key == "embeddings":
        assert got == pytest.approx(want, abs=1e-5)
        return
    assert [{**o, "score": None} for o in got] == [{**o, "score": None} for o in want]
    assert [o["score"] for o in got] == pytest.approx([o["score"] for o in want], abs=1e-5)


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "says"),
    [
        (SENTIMENT, {"json": {"inputs": ["good", "  "]}}, 422, "input 1: empty text"),
        (SENTIMENT, {"json": {"inputs": ["good", 3]}}, 422, "input 1: expected a string"),
        (NER, {"content": image_bytes(), "headers": {"Content-Type": "image/png"}}, 415, "text/plain"),
        (NER, {"json": {"texts": ["alice"]}}, 400, "inputs"),
        (SENTIMENT, {"json": {"inputs": ["good"]}, "params": {"top_k": 0}}, 422, "top_k"),
        (FEATURES, {"content": b"not an image", "headers": {"Content-Type": "image/png"}}, 422, "input 0"),
        (FEATURES, {"json": {"inputs": ["%%"]}}, 422, "input 0: not valid base64"),
        (FEATURES, {"content": image_bytes("PNG", (2100, 2000))}, 413, "pixels"),
        (FEATURES, {"content": image_bytes("JPEG"), "headers": {"Content-Type": "image/png"}}, 415, "JPEG"),
    ],
)
async def test_bad_inputs_are_refused_with_a_4xx_that_says_why(
    client: httpx.AsyncClient, path: str, kwargs: dict[str, Any], status: int, says: str
) -> None:
    response = await client.post(path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert says in error["message"] and error["type"] and error["request_id"]


async def test_the_v2_protocol_points_the_new_tasks_to_the_predict_route(client: httpx.AsyncClient) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["good"]}]}
    response = await client.post("/v2/models/tiny-sentiment/infer", json=body)
    assert response.status_code == 400
    assert "/v1/models/tiny-sentiment/predict" in response.json()["error"]
