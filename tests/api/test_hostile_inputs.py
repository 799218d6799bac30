"""Hostile predict requests, in-process: images too thin for any model or that a model's
preprocessing would blow up, the deadline held while inputs are decoded and preprocessed, and
headers and bodies that a loose parser would turn into a 500. Each is a 4xx (or 504) in the one
error shape, never reaches the model, and leaves the gateway serving the next good request."""

from __future__ import annotations

import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from service.serving.runtime.transformers_adapter import ImageClassificationAdapter
from service.settings import Settings
from tests.api.test_bad_inputs import GOOD, PNG, PREDICT, assert_refused, b64, files
from tests.conftest import REPO, image_bytes, started_client
from tests.serving.runtime.test_torch_adapter import write_colour_manifest, write_colour_model

pytestmark = pytest.mark.anyio

THIN = image_bytes(size=(1, 6000))  # 110 bytes; the torch adapter used to resize it to 256x1536000


# --- thin images ----------------------------------------------------------------------------


async def test_thin_image_is_422_naming_the_input(client: httpx.AsyncClient, model_calls: list[int]) -> None:
    assert len(THIN) < 200
    response = await client.post(PREDICT, content=THIN, headers=PNG)
    await assert_refused(
        client, model_calls, response, 422, "invalid_input", "input 0", "1x6000", "the limit is 32 to 1"
    )


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"files": files((GOOD, "image/png"), (THIN, "image/png"))}, id="multipart"),
        pytest.param({"json": {"inputs": [b64(GOOD), b64(image_bytes(size=(20000, 1)))]}}, id="json"),
    ],
)
async def test_thin_second_image_is_422_naming_input_1(
    client: httpx.AsyncClient, model_calls: list[int], body: dict[str, Any]
) -> None:
    response = await client.post(PREDICT, **body)
    message = await assert_refused(client, model_calls, response, 422, "invalid_input", "input 1", "aspect")
    assert "input 0" not in message


async def test_an_image_exactly_at_the_aspect_limit_is_served(client: httpx.AsyncClient) -> None:
    response = await client.post(PREDICT, content=image_bytes(size=(3, 96)), headers=PNG)
    assert response.status_code == 200, response.text


@pytest.fixture
async def torch_client(settings: Settings, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with two torch-adapter models (EfficientNet's preprocessing: shorter side to
    `resize`, centre crop): `colour` resizes to 256, `colour-1024` to 1024."""
    folder = tmp_path / "torch-models"
    write_colour_model(folder)
    write_colour_manifest(folder, "colour", resize=256)
    write_colour_manifest(folder, "colour-1024", resize=1024)
    async with started_client(settings.model_copy(update={"models_dir": folder})) as http:
        yield http


async def test_thin_image_to_the_torch_adapter_is_refused_before_it_is_resized(
    torch_client: httpx.AsyncClient,
) -> None:
    thin = await torch_client.post("/v1/models/colour/predict", content=THIN, headers=PNG)
    assert thin.status_code == 422, thin.text
    assert "input 0: image is 1x6000" in thin.json()["error"]["message"]
    tall = image_bytes(size=(7, 224), color=(10, 10, 240))  # 32 to 1: resized to 256x8192, served
    served = await torch_client.post("/v1/models/colour/predict", content=tall, headers=PNG)
    assert served.status_code == 200, served.text
    assert served.json()["predictions"][0][0]["label"] == "blue"


async def test_what_a_model_would_resize_an_image_to_is_bounded_too(torch_client: httpx.AsyncClient) -> None:
    # 20x600 is within every input limit, but resizing its shorter side to 1024 would make a
    # 1024x30720 image (31 million pixels, 4 million allowed): refused from the header.
    response = await torch_client.post(
        "/v1/models/colour-1024/predict", content=image_bytes(size=(20, 600)), headers=PNG
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["message"] == (
        "input 0: this model's preprocessing would resize the 20x600 image to 1024x30720"
        " = 31457280 pixels; the limit is 4000000"
    )
    square = await torch_client.post(
        "/v1/models/colour-1024/predict", content=image_bytes(size=(20, 20)), headers=PNG
    )
    assert square.status_code == 200, square.text


# --- the deadline while inputs are decoded and preprocessed ---------------------------------


async def test_deadline_holds_while_an_input_is_preprocessed(
    client: httpx.AsyncClient, model_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Preprocessing that would take 30 s: the answer is 504 at the request's deadline, while
    # the preprocessing is still running (it stops before the next input).
    started, release = threading.Event(), threading.Event()
    preprocessed: list[int] = []
    preprocess = ImageClassificationAdapter.preprocess

    def slow_preprocess(self: ImageClassificationAdapter, item: Image.Image) -> Any:
        started.set()
        release.wait(30)
        preprocessed.append(1)
        return preprocess(self, item)

    monkeypatch.setattr(ImageClassificationAdapter, "preprocess", slow_preprocess)
    try:
        response = await client.post(
            PREDICT,
            files=files((GOOD, "image/png"), (GOOD, "image/png")),
            headers={"X-Request-Timeout-Ms": "500"},
        )
        assert started.is_set() and preprocessed == []  # answered while the first input ran
    finally:
        release.set()
    monkeypatch.setattr(ImageClassificationAdapter, "preprocess", preprocess)
    await assert_refused(client, model_calls, response, 504, "timeout", "deadline", "preprocessing")


# --- headers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"\xb2", id="superscript-two-latin-1"),
        pytest.param("²".encode(), id="superscript-two-utf-8"),
        pytest.param("٣".encode(), id="arabic-indic-three"),
        pytest.param(b"1" * 5000, id="5000-digits"),
        pytest.param(b"0" * 30 + b"5", id="31-digits"),
        pytest.param(b"0", id="zero"),
        pytest.param(b"-5", id="negative"),
        pytest.param(b"1e3", id="exponent"),
        pytest.param(b"", id="empty"),
        pytest.param(b"600001", id="over-the-maximum"),
    ],
)
async def test_bad_timeout_header_is_422(
    client: httpx.AsyncClient, model_calls: list[int], value: bytes
) -> None:
    response = await client.post(PREDICT, content=GOOD, headers={**PNG, "X-Request-Timeout-Ms": value})
    await assert_refused(
        client, model_calls, response, 422, "invalid_input", "X-Request-Timeout-Ms", "600000"
    )


async def test_timeout_header_with_spaces_around_is_taken(client: httpx.AsyncClient) -> None:
    response = await client.post(PREDICT, content=GOOD, headers={**PNG, "X-Request-Timeout-Ms": " 5000 "})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"\xb2", id="superscript-two"),
        pytest.param(b"1" * 5000, id="5000-digits"),
        pytest.param(b"12abc", id="not-a-number"),
    ],
)
async def test_bad_content_length_is_400(
    client: httpx.AsyncClient, model_calls: list[int], value: bytes
) -> None:
    response = await client.post(PREDICT, content=GOOD, headers={**PNG, "Content-Length": value})
    await assert_refused(client, model_calls, response, 400, "invalid_request", "Content-Length")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"order\x001", id="nul"),
        pytest.param(b"order\x1b1", id="escape"),
        pytest.param("ordér".encode(), id="non-ascii"),
        pytest.param(b"k" * 256, id="256-characters"),
        pytest.param(b"   ", id="blank"),
    ],
)
async def test_bad_idempotency_key_is_400(
    client: httpx.AsyncClient, model_calls: list[int], value: bytes
) -> None:
    response = await client.post(PREDICT, content=GOOD, headers={**PNG, "Idempotency-Key": value})
    await assert_refused(client, model_calls, response, 400, "invalid_request", "Idempotency-Key", "255")


# --- JSON bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        pytest.param(b"[" * 1000 + b"]" * 1000, "nested too deeply", id="array-1000-deep"),
        pytest.param(
            b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested", id="inputs-100000-deep"
        ),
        pytest.param(b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested", id="object-5000-deep"),
        pytest.param(b'{"inputs": [' + b"9" * 5000 + b"]}", "digits", id="5000-digit-integer"),
    ],
)
async def test_hostile_json_is_400(
    client: httpx.AsyncClient, model_calls: list[int], body: bytes, says: str
) -> None:
    response = await client.post(PREDICT, content=body, headers={"Content-Type": "application/json"})
    await assert_refused(client, model_calls, response, 400, "invalid_request", "JSON", says)


async def test_json_numbers_and_constants_where_strings_go_are_422(
    client: httpx.AsyncClient, model_calls: list[int]
) -> None:
    body = b'{"inputs": ["' + b64(GOOD).encode() + b'", NaN]}'
    response = await client.post(PREDICT, content=body, headers={"Content-Type": "application/json"})
    await assert_refused(client, model_calls, response, 422, "invalid_input", "input 1", "string")


# --- a text model ---------------------------------------------------------------------------

TEXT = "/v1/models/all-minilm-l6-v2/predict"


@pytest.fixture
async def text_client(settings: Settings, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with the shipped sentence-embedding model."""
    folder = tmp_path / "text-models"
    folder.mkdir()
    shutil.copy(REPO / "models" / "all-minilm-l6-v2.yaml", folder)
    async with started_client(settings.model_copy(update={"models_dir": folder})) as http:
        yield http


async def test_text_model_refuses_what_its_tokenizer_cannot_take(text_client: httpx.AsyncClient) -> None:
    json_body = {"Content-Type": "application/json"}
    # "\ud800" is valid JSON for a lone surrogate, which is no Unicode text: the tokenizer raised
    lone = await text_client.post(TEXT, content=b'{"inputs": ["fine", "a \\ud800 b"]}', headers=json_body)
    assert lone.status_code == 422, lone.text
    assert lone.json()["error"]["message"] == (
        "input 1: text is not valid Unicode (a lone surrogate U+D800 at character 2)"
    )
    deep = await text_client.post(TEXT, content=b"[" * 1000 + b"]" * 1000, headers=json_body)
    assert deep.status_code == 400, deep.text
    # multipart parts are texts here, decoded as UTF-8
    parts = [
        ("file", ("a.txt", "une tête".encode(), "text/plain")),
        ("file", ("b.txt", b"\xff\xfe", "text/plain")),
    ]
    bad = await text_client.post(TEXT, files=parts)
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"]["message"].startswith("input 1: text is not valid UTF-8")
    good = await text_client.post(TEXT, files=[parts[0], ("file", ("c.txt", b"un chat", "text/plain"))])
    assert good.status_code == 200, good.text
    as_json = await text_client.post(TEXT, json={"inputs": ["une tête", "un chat"]})
    assert good.json()["embeddings"] == as_json.json()["embeddings"]
