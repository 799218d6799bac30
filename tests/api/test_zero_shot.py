"""Zero-shot image classification through the predict route, on a small CLIP and a small SigLIP
built from their configs (random weights): each image's labels and scores are the transformers
pipeline's, one image at a time; requests with different candidate labels share one forward pass;
bad candidate labels are refused with a 422 that names the field; each request is metered once,
priced per image."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.bounds import MAX_CANDIDATE_LABELS, MAX_LABEL_CHARS
from service.db.models import UsageEvent
from service.serving.runtime.zero_shot import ZeroShotImageClassificationAdapter
from tests.api.conftest import Gate, held
from tests.conftest import image_bytes, write_manifest

pytestmark = pytest.mark.anyio

PREDICT = "/v1/models/tiny-clip/predict"
LABELS = ["cat", "dog", "red car", "photo of 2"]
IMAGES = [
    image_bytes("PNG", (40, 30), (200, 30, 30)),
    image_bytes("PNG", (64, 96), (30, 200, 30)),
    image_bytes("PNG", (17, 23), (30, 30, 200)),
]


@pytest.fixture(autouse=True)
def zero_shot_models(models_dir: Path, tiny_clip_dir: Path, tiny_siglip_dir: Path) -> None:
    for name, source in [("tiny-clip", tiny_clip_dir), ("tiny-siglip", tiny_siglip_dir)]:
        write_manifest(
            models_dir,
            name,
            f"""
        name: {name}
        task: zero-shot-image-classification
        source: {source}
        dtype: float32  # compared with the float32 pipeline below; auto may pick bfloat16
        preprocessing: exact  # the pipeline's own image processor, for equal answers
        batching: {{max_batch_size: 8, max_delay_ms: 2}}
        price: {{per_image: 0.001}}
        """,
        )


def files(images: list[bytes], labels: list[str]) -> dict[str, Any]:
    parts = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return {"files": parts, "data": {"candidate_labels": labels}}


def as_json(images: list[bytes], labels: Any) -> dict[str, Any]:
    inputs = [base64.b64encode(data).decode() for data in images]
    return {"json": {"inputs": inputs, "candidate_labels": labels}}


@pytest.mark.parametrize("model", ["tiny-clip", "tiny-siglip"])
async def test_each_image_gets_the_pipelines_labels_and_scores_best_first(
    client: httpx.AsyncClient, tiny_clip_dir: Path, tiny_siglip_dir: Path, model: str
) -> None:
    from transformers import pipeline

    path = f"/v1/models/{model}/predict"
    response = await client.post(path, params={"top_k": 10}, **files(IMAGES, LABELS))
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["predictions"]) == len(IMAGES) and body["usage"]["inputs"] == len(IMAGES)
    source = tiny_clip_dir if model == "tiny-clip" else tiny_siglip_dir
    reference = pipeline("zero-shot-image-classification", model=str(source), device="cpu")
    for data, ranked in zip(IMAGES, body["predictions"], strict=True):
        image = Image.open(io.BytesIO(data)).convert("RGB")
        expected = reference(image, candidate_labels=LABELS)  # one image at a time
        assert [p["label"] for p in ranked] == [e["label"] for e in expected]
        assert [p["score"] for p in ranked] == pytest.approx([e["score"] for e in expected], abs=1e-5)
    top2 = await client.post(path, params={"top_k": 2}, **as_json(IMAGES[:1], LABELS))
    (alone,) = top2.json()["predictions"]  # JSON body: the same answer, from a batch of one image
    assert [p["label"] for p in alone] == [p["label"] for p in body["predictions"][0][:2]]
    assert [p["score"] for p in alone] == pytest.approx(
        [p["score"] for p in body["predictions"][0][:2]], abs=1e-5
    )


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    with held(ZeroShotImageClassificationAdapter, monkeypatch) as gate:
        yield gate


async def test_requests_with_different_labels_share_a_batch_and_each_gets_its_own(
    client: httpx.AsyncClient, gate: Gate
) -> None:
    label_sets = [["cat", "dog"], ["red car", "cat", "dog"], ["cat", "dog"], ["photo"]]
    bodies = [as_json([IMAGES[i % len(IMAGES)]], labels) for i, labels in enumerate(label_sets)]
    alone = [(await client.post(PREDICT, **body)).json()["predictions"] for body in bodies]
    answers = [r.json()["predictions"] for r in await gate.one_then_the_rest(client, "tiny-clip", bodies)]
    [held_alone, shared] = [[f.params.candidate_labels for f in b] for b in gate.batches]  # 2 passes
    assert held_alone == [tuple(label_sets[0])]
    assert sorted(shared) == sorted(tuple(labels) for labels in label_sets[1:])  # queued in any order
    for mine, single, labels in zip(answers, alone, label_sets, strict=True):
        assert [p["label"] for p in mine[0]] == [p["label"] for p in single[0]]
        assert sorted(p["label"] for p in mine[0]) == sorted(labels)
        assert [p["score"] for p in mine[0]] == pytest.approx([p["score"] for p in single[0]], abs=1e-5)
    adapter = client._transport.app.state.gateway.registry.entries["tiny-clip"].adapter  # type: ignore[attr-defined]
    assert set(adapter._texts) == {("cat", "dog"), ("red car", "cat", "dog"), ("photo",)}  # cached


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        (as_json(IMAGES[:1], []), "candidate_labels: give at least one label"),
        (files(IMAGES[:1], []), "candidate_labels: required"),
        ({"content": IMAGES[0], "headers": {"Content-Type": "image/png"}}, "candidate_labels: required"),
        ({"json": {"inputs": [base64.b64encode(IMAGES[0]).decode()]}}, "candidate_labels: required"),
        (as_json(IMAGES[:1], "cat"), "candidate_labels: must be a list of strings"),
        (as_json(IMAGES[:1], ["cat", 3]), "candidate_labels: must be a list of strings"),
        (
            as_json(IMAGES[:1], [f"l{i}" for i in range(MAX_CANDIDATE_LABELS + 1)]),
            f"the limit is {MAX_CANDIDATE_LABELS}",
        ),
        (files(IMAGES[:1], ["cat", "x" * (MAX_LABEL_CHARS + 1)]), "candidate_labels[1]: 201 characters"),
        (as_json(IMAGES[:1], ["cat", " "]), "candidate_labels[1]: empty label"),
        (as_json(IMAGES[:1], ["cat", "dog", "cat"]), "'cat' is given more than once"),
        (as_json(IMAGES[:1], ["cat\x00"]), "candidate_labels[0]: holds a NUL byte"),
    ],
)
async def test_bad_candidate_labels_are_a_422_naming_the_field(
    client: httpx.AsyncClient, kwargs: dict[str, Any], says: str
) -> None:
    response = await client.post(PREDICT, **kwargs)
    assert response.status_code == 422, response.text
    assert says in response.json()["error"]["message"]


async def test_a_model_of_another_task_refuses_candidate_labels(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/models/tiny-vit/predict", **files(IMAGES[:1], ["cat"]))
    assert response.status_code == 422
    assert "candidate_labels: only zero-shot" in response.json()["error"]["message"]


async def test_one_usage_event_per_request_priced_per_image(client: httpx.AsyncClient) -> None:
    response = await client.post(PREDICT, **files(IMAGES, LABELS))
    assert response.status_code == 200 and response.json()["usage"]["cost_micro"] == 3000
    sessions: sessionmaker[Session] = client._transport.app.state.gateway.sessions  # type: ignore[attr-defined]
    with sessions() as session:
        [event] = session.scalars(
            select(UsageEvent).where(UsageEvent.request_id == response.headers["x-request-id"])
        )
    assert (event.model, event.inputs, event.per_input_micro, event.amount_micro) == (
        "tiny-clip",
        3,
        1000,
        3000,
    )


async def test_the_other_protocols_refuse_a_zero_shot_model(client: httpx.AsyncClient) -> None:
    v2 = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["eA=="]}]}
    response = await client.post("/v2/models/tiny-clip/infer", json=v2)
    assert response.status_code == 400 and "/v1/models/tiny-clip/predict" in response.json()["error"]
    response = await client.post("/v1/embeddings", json={"model": "tiny-clip", "input": "cat"})
    assert response.status_code in (400, 422)
    assert "not a text embedding model" in response.json()["error"]["message"]
