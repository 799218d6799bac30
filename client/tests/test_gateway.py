"""The client against a real `maas serve` process: every method the gateway serves today."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_KEY, MAX_INPUTS, TINY_LABELS, png
from maas_client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    InvalidInputError,
    MaasError,
    MethodNotAllowedError,
    ModelUnavailableError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from maas_client.cli import main
from maas_client.errors import error_from_response
from PIL import Image

from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(gateway: Server) -> Iterator[Client]:
    with Client(gateway.base_url, ADMIN_KEY, timeout=60) as client:
        yield client


def test_predict_one_image_from_a_path(client: Client, tmp_path: Path) -> None:
    photo = tmp_path / "red.png"
    photo.write_bytes(png())
    result = client.predict("tiny-vit", photo, top_k=2)
    assert result.id.startswith("req_") and result.model == "tiny-vit"
    assert result.usage.inputs == 1 and result.embeddings is None
    (ranked,) = result.predictions
    assert len(ranked) == 2 and {guess.label for guess in ranked} <= set(TINY_LABELS)
    assert ranked[0].score >= ranked[1].score and result.top == [ranked[0]]


def test_predict_several_images_of_every_kind_answers_in_input_order(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(png(fmt="JPEG"))
    images = [
        str(path),
        png((0, 200, 0)),
        io.BytesIO(png(fmt="WEBP")),
        Image.new("RGB", (32, 32), (0, 0, 255)),
    ]
    result = client.predict("tiny-vit", images, top_k=3)
    assert result.usage.inputs == 4 and len(result.predictions) == 4
    assert all(len(ranked) == 3 for ranked in result.predictions)
    # the same image alone gets the same scores as in the batch: order is kept
    alone = client.predict("tiny-vit", png((0, 200, 0)), top_k=3)
    assert [g.label for g in alone.predictions[0]] == [g.label for g in result.predictions[1]]


def test_embed_texts_with_the_shipped_sentence_model(client: Client) -> None:
    result = client.embed("all-minilm-l6-v2", ["a cat on a mat", "stock markets fell"])
    assert result.usage.inputs == 2 and len(result.embeddings) == 2
    assert all(len(v) == 384 for v in result.embeddings)
    assert math.isclose(math.fsum(x * x for x in result.embeddings[0]), 1.0, rel_tol=1e-3)
    assert len(client.embed("all-minilm-l6-v2", "one text").embeddings) == 1


def test_models_list_and_get(client: Client) -> None:
    models = {m.id: m for m in client.models.list()}
    assert models["tiny-vit"].status == "ready" and models["tiny-vit"].task == "image-classification"
    assert models["tiny-vit"].devices == ["cpu"] and models["tiny-vit"].labels == 3
    assert models["missing"].status == "unavailable" and models["missing"].reason
    assert client.models.get("all-minilm-l6-v2").task == "feature-extraction"
    assert client.ready()


def test_base_url_and_key_come_from_the_environment(gateway: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_BASE_URL", gateway.base_url)
    monkeypatch.setenv("MAAS_API_KEY", ADMIN_KEY)
    with Client() as client:
        assert client.base_url == gateway.base_url
        assert client.models.get("tiny-vit").id == "tiny-vit"


def test_a_wrong_key_raises_authentication_error_with_the_request_id(gateway: Server) -> None:
    with Client(gateway.base_url, "mk_wrong") as client, pytest.raises(AuthenticationError) as caught:
        client.models.list()
    error = caught.value
    assert error.status_code == 401 and error.type == "authentication_error"
    assert error.request_id and error.request_id.startswith("req_") and error.message


def test_unknown_model_raises_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.predict("no-such-model", png())
    assert caught.value.status_code == 404 and caught.value.type == "not_found"


def test_too_many_inputs_raise_payload_too_large(client: Client) -> None:
    with pytest.raises(PayloadTooLargeError) as caught:
        client.predict("tiny-vit", [png()] * (MAX_INPUTS + 1))
    assert caught.value.status_code == 413 and str(MAX_INPUTS) in caught.value.message


def test_an_image_sent_to_a_text_model_raises_unsupported_media_type(client: Client) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        client.predict("all-minilm-l6-v2", png())
    assert caught.value.status_code == 415


def test_bytes_that_are_no_image_raise_invalid_input_naming_the_input(client: Client) -> None:
    with pytest.raises(InvalidInputError) as caught:
        client.predict("tiny-vit", [png(), b"this is not an image"])
    error = caught.value
    assert isinstance(error, BadRequestError) and error.status_code == 422 and error.type == "invalid_input"
    assert "input 1" in error.message
    with pytest.raises(InvalidInputError):
        client.predict("tiny-vit", png(), top_k=0)


def test_a_method_the_route_does_not_take_raises_method_not_allowed(gateway: Server) -> None:
    # The client never sends one; a client and gateway of different versions could.
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=gateway.base_url, headers=headers) as http:
        answer = http.put("/v1/models/tiny-vit/predict", content=png())
    error = error_from_response(answer)
    assert answer.status_code == 405 and isinstance(error, MethodNotAllowedError)
    assert error.type == "method_not_allowed" and error.message and error.request_id
    assert error.request_id == answer.headers["x-request-id"]


def test_an_unavailable_model_raises_at_once_without_retrying(gateway: Server) -> None:
    sleeps: list[float] = []
    client = Client(gateway.base_url, ADMIN_KEY, sleep=sleeps.append)
    with client, pytest.raises(ModelUnavailableError) as caught:
        client.predict("missing", png())
    error = caught.value
    assert error.status_code == 503 and error.type == "model_unavailable" and error.retry_after == 30
    assert sleeps == []  # a model that failed to load stays unavailable: retrying only wastes time


@pytest.mark.anyio
async def test_async_client_predicts_lists_and_raises_like_the_sync_one(gateway: Server) -> None:
    async with AsyncClient(gateway.base_url, ADMIN_KEY) as client:
        result = await client.predict("tiny-vit", [png(), png((0, 0, 200))], top_k=1)
        assert len(result.predictions) == 2 and result.predictions[0][0].label in TINY_LABELS
        embedded = await client.embed("all-minilm-l6-v2", ["hello"])
        assert len(embedded.embeddings[0]) == 384
        assert "tiny-vit" in {m.id for m in await client.models.list()}
        assert (await client.models.get("tiny-vit")).status == "ready"
        assert await client.ready()
        with pytest.raises(NotFoundError):
            await client.models.get("nope")
        with pytest.raises(MaasError):
            await client.predict("tiny-vit", b"nope")


def test_cli_prints_a_table_or_json(
    gateway: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "cat.png"
    photo.write_bytes(png())
    common = ["--base-url", gateway.base_url, "--api-key", ADMIN_KEY]
    assert main([*common, "predict", "tiny-vit", str(photo), str(photo), "--top-k", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == str(photo) and len(table) == 6 and table[1].split(maxsplit=1)[1] in TINY_LABELS
    assert main([*common, "predict", "tiny-vit", str(photo), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["usage"]["inputs"] == 1
    assert main([*common, "models"]) == 0
    assert "tiny-vit" in capsys.readouterr().out
    assert main(["--base-url", gateway.base_url, "--api-key", "mk_wrong", "models"]) == 1
    assert "authentication_error" in capsys.readouterr().err


def test_the_command_classifies_files_from_the_shell(gateway: Server, tmp_path: Path) -> None:
    photo = tmp_path / "red.png"
    photo.write_bytes(png())
    env = {**os.environ, "MAAS_BASE_URL": gateway.base_url, "MAAS_API_KEY": ADMIN_KEY}
    shown = subprocess.run(
        [sys.executable, "-m", "maas_client", "predict", "tiny-vit", str(photo), "--top-k", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    name, guess = shown.stdout.splitlines()
    assert name == str(photo) and guess.split(maxsplit=1)[1] in TINY_LABELS
    refused = subprocess.run(
        [sys.executable, "-m", "maas_client", "predict", "missing", str(photo)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1 and "model_unavailable" in refused.stderr and "req_" in refused.stderr
