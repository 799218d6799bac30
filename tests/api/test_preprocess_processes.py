"""MAAS_PREPROCESS_PROCESSES: images decoded and preprocessed in worker processes answer exactly
as on threads, bad images get the same 4xx, and /metrics says where the work ran."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image

from service.settings import Settings
from tests.conftest import image_bytes, started_client

pytestmark = pytest.mark.anyio
PREDICT = "/v1/models/tiny-vit/predict"


@pytest.fixture
async def pooled(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The same gateway as `client`, with one preprocessing process."""
    async with started_client(settings.model_copy(update={"preprocess_processes": 1})) as http:
        yield http


def _metric(text: str, where: str) -> float:
    line = next(
        x for x in text.splitlines() if x.startswith(f'maas_preprocessed_inputs_total{{where="{where}"}}')
    )
    return float(line.rsplit(" ", 1)[1])


async def test_processes_answer_as_threads_do(client: httpx.AsyncClient, pooled: httpx.AsyncClient) -> None:
    images = [image_bytes(color=(255, 0, 0)), image_bytes("JPEG", color=(0, 0, 255)), image_bytes("WEBP")]
    files = [("file", (f"{i}.img", data, "application/octet-stream")) for i, data in enumerate(images)]
    on_threads = await client.post(PREDICT, files=files)
    in_processes = await pooled.post(PREDICT, files=files)
    assert on_threads.status_code == in_processes.status_code == 200, in_processes.text
    assert in_processes.json()["predictions"] == on_threads.json()["predictions"]
    metrics = (await pooled.get("/metrics")).text
    assert _metric(metrics, "process") == 3 and 'where="thread"' not in metrics
    assert _metric((await client.get("/metrics")).text, "thread") == 3


def _huge_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (2100, 2000)).save(buffer, format="PNG")  # 4.2 MP: over the tests' 4 MP limit
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"not an image at all", "image/png", 422),
        (image_bytes("JPEG"), "image/png", 415),
        (image_bytes()[:60], "application/octet-stream", 422),
        (_huge_png(), "image/png", 413),
        (image_bytes(size=(1, 6000)), "image/png", 422),
    ],
    ids=["not-an-image", "declared-png-is-jpeg", "truncated", "too-many-pixels", "too-thin"],
)
async def test_bad_images_get_the_same_error_from_processes(
    client: httpx.AsyncClient, pooled: httpx.AsyncClient, body: bytes, content_type: str, status: int
) -> None:
    headers = {"Content-Type": content_type}
    on_threads = await client.post(PREDICT, content=body, headers=headers)
    in_processes = await pooled.post(PREDICT, content=body, headers=headers)
    assert on_threads.status_code == in_processes.status_code == status, in_processes.text
    assert in_processes.json()["error"]["message"] == on_threads.json()["error"]["message"]
    assert in_processes.json()["error"]["type"] == on_threads.json()["error"]["type"]
