"""Predict through the HTTP API, in-process: the three body shapes, top_k, and one error shape."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.conftest import TINY_LABELS, image_bytes

pytestmark = pytest.mark.anyio


async def test_raw_image_bytes_get_one_ranked_list(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/models/tiny-vit/predict",
        content=image_bytes("JPEG"),
        headers={"Content-Type": "image/jpeg"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("req_") and response.headers["x-request-id"] == body["id"]
    assert body["model"] == "tiny-vit" and body["usage"]["inputs"] == 1
    assert body["usage"]["cost_micro"] == 1000 and body["usage"]["cost"] == "0.001000"
    [ranked] = body["predictions"]
    assert {p["label"] for p in ranked} == set(TINY_LABELS)
    scores = [p["score"] for p in ranked]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-4)


async def test_multipart_files_answer_in_input_order(client: httpx.AsyncClient) -> None:
    images = [image_bytes(color=(255, 0, 0)), image_bytes(color=(0, 0, 255)), image_bytes("JPEG")]
    files = [("file", (f"{i}.img", data, "application/octet-stream")) for i, data in enumerate(images)]
    response = await client.post("/v1/models/tiny-vit/predict?top_k=1", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["inputs"] == 3 and [len(p) for p in body["predictions"]] == [1, 1, 1]
    # each answer is the one that image alone gets
    for data, batched in zip(images, body["predictions"], strict=True):
        alone = await client.post(
            "/v1/models/tiny-vit/predict?top_k=1",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        [[single]] = alone.json()["predictions"]
        assert single["label"] == batched[0]["label"]
        assert single["score"] == pytest.approx(batched[0]["score"], abs=1e-4)


async def test_base64_json_and_data_urls(client: httpx.AsyncClient) -> None:
    png = image_bytes()
    inputs = [base64.b64encode(png).decode(), "data:image/png;base64," + base64.b64encode(png).decode()]
    response = await client.post("/v1/models/tiny-vit/predict?top_k=2", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    first, second = response.json()["predictions"]
    assert len(first) == 2 and first == second


@pytest.mark.parametrize("top_k", [0, -1, 1001, "many"])
async def test_top_k_out_of_range_is_422(client: httpx.AsyncClient, top_k: object) -> None:
    response = await client.post(
        f"/v1/models/tiny-vit/predict?top_k={top_k}",
        content=image_bytes(),
        headers={"Content-Type": "image/png"},
    )
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_input"
    assert "top_k" in response.json()["error"]["message"]


async def test_top_k_larger_than_the_label_set_returns_every_label(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/models/tiny-vit/predict?top_k=50", content=image_bytes(), headers={"Content-Type": "image/png"}
    )
    assert len(response.json()["predictions"][0]) == len(TINY_LABELS)


async def test_unknown_model_is_404_in_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/models/nope/predict", content=image_bytes(), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "not_found" and "nope" in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


async def test_unavailable_model_is_503_with_retry_after(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/models/missing/predict", content=image_bytes(), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 503 and int(response.headers["retry-after"]) > 0
    assert "no-such-folder" in response.json()["error"]["message"]


async def test_metrics_count_requests_by_model_and_status(client: httpx.AsyncClient) -> None:
    await client.post(
        "/v1/models/tiny-vit/predict", content=image_bytes(), headers={"Content-Type": "image/png"}
    )
    await client.post(
        "/v1/models/tiny-vit/predict", content=b"not an image", headers={"Content-Type": "image/png"}
    )
    text = (await client.get("/metrics")).text
    assert 'maas_requests_total{model="tiny-vit",status="200"} 1.0' in text
    assert 'maas_requests_total{model="tiny-vit",status="422"} 1.0' in text
    assert 'maas_model_ready{model="tiny-vit"} 1.0' in text
