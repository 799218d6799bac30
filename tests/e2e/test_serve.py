"""End to end: `maas serve` as a real process, real HTTP, the shipped models giving right answers."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import signal
import stat
from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.serving.devices import cpu_has_native_bfloat16
from tests.conftest import TINY_LABELS, image_bytes
from tests.e2e.conftest import Server, start_server
from tests.shipped import digit_images

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def admin_key(server: Server) -> str:
    return (server.data_dir / "admin.key").read_text().strip()


@pytest.fixture(scope="module")
def http(server: Server, admin_key: str) -> httpx.Client:
    with httpx.Client(
        base_url=server.base_url, timeout=60, headers={"Authorization": f"Bearer {admin_key}"}
    ) as client:
        yield client


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def test_first_start_prints_where_the_generated_admin_key_is_kept_not_the_key(
    server: Server, admin_key: str
) -> None:
    assert admin_key.startswith("mk_") and len(admin_key) > 40
    assert stat.S_IMODE((server.data_dir / "admin.key").stat().st_mode) == 0o600
    assert admin_key not in server.log()
    assert f"generated an admin key, kept in {(server.data_dir / 'admin.key').resolve()}" in server.log()


def test_print_admin_key_prints_the_kept_key_when_asked(
    tmp_path_factory: pytest.TempPathFactory, e2e_models_dir: Path
) -> None:
    folder = tmp_path_factory.mktemp("print-key-models")
    (folder / "tiny-vit.yaml").write_text((e2e_models_dir / "tiny-vit.yaml").read_text())
    data_dir = tmp_path_factory.mktemp("print-key") / "var"
    generating = start_server(folder, data_dir, args=["--print-admin-key"])
    generating.stop()
    key = (data_dir / "admin.key").read_text().strip()
    assert "generated an admin key" in generating.log() and generating.log().count(key) == 1
    later = start_server(folder, data_dir, env={"MAAS_PRINT_ADMIN_KEY": "true"})
    later.stop()
    assert "generated" not in later.log() and later.log().count(key) == 1


def test_health_readiness_and_metrics_need_no_key(server: Server) -> None:
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200
    ready = httpx.get(f"{server.base_url}/readyz")
    assert ready.status_code == 200 and ready.json()["models"]["tiny-vit"] == "ready"
    assert "maas_model_ready" in httpx.get(f"{server.base_url}/metrics").text
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 401


def test_models_list_shows_status_dtype_devices_and_the_unreachable_hub_model(
    http: httpx.Client,
) -> None:
    models = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert models["tiny-vit"]["status"] == "ready"
    auto_dtype = "bfloat16" if cpu_has_native_bfloat16() else "float32"  # `dtype: auto` on a CPU
    assert models["tiny-vit"]["dtype"] == auto_dtype and models["tiny-vit"]["devices"] == ["cpu"]
    assert models["tiny-vit"]["batching"] == {
        "max_batch_size": 32,
        "max_delay_ms": 5.0,
        "max_queue": 256,
    }
    hub_models = ["vit-base", "distilbert-sst2", "bert-base-ner", "dinov2-small", "clip-vit-base-patch32"]
    hub_models += ["yolos-tiny", "segformer-b0-ade"]
    for name in hub_models:  # offline: listed, unavailable
        hub = models[name]
        assert hub["status"] == "unavailable" and "hub" in hub["reason"], name
        assert http.get(f"/v1/models/{name}").json()["status"] == "unavailable"


def test_the_pretrained_imagenet_classifier_sees_a_cat(http: httpx.Client) -> None:
    from skimage import data

    photo = jpeg(Image.fromarray(data.chelsea()))
    response = http.post(
        "/v1/models/efficientnet-lite0/predict?top_k=3", content=photo, headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    top = response.json()["predictions"][0]
    assert "cat" in top[0]["label"], top
    assert sum(p["score"] for p in top if "cat" in p["label"]) > 0.8


def test_the_shipped_digits_vit_reads_held_out_digits(http: httpx.Client) -> None:
    images, labels = digit_images(count=24)
    files = [("file", (f"{i}.png", png, "image/png")) for i, png in enumerate(images)]
    response = http.post("/v1/models/digits-vit/predict?top_k=1", files=files)
    assert response.status_code == 200, response.text
    predicted = [p[0]["label"] for p in response.json()["predictions"]]
    correct = sum(p == str(y) for p, y in zip(predicted, labels, strict=True))
    assert correct >= 22, (predicted, labels)


def test_the_text_model_returns_normalised_sentence_embeddings(http: httpx.Client) -> None:
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply."]
    response = http.post("/v1/models/all-minilm-l6-v2/predict", json={"inputs": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "predictions" not in body and body["usage"]["inputs"] == 3
    vectors = body["embeddings"]
    assert [len(v) for v in vectors] == [384, 384, 384]

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert all(math.isclose(cosine(v, v), 1.0, abs_tol=1e-4) for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3


def test_all_three_body_shapes_over_real_http(http: httpx.Client) -> None:
    png = image_bytes()
    raw = http.post("/v1/models/tiny-vit/predict", content=png, headers={"Content-Type": "image/png"})
    multi = http.post("/v1/models/tiny-vit/predict", files=[("file", ("a.png", png, "image/png"))])
    as_json = http.post("/v1/models/tiny-vit/predict", json={"inputs": [base64.b64encode(png).decode()]})
    answers = [r.json()["predictions"] for r in (raw, multi, as_json)]
    assert answers[0] == answers[1] == answers[2]
    assert {p["label"] for p in answers[0][0]} == set(TINY_LABELS)


def test_a_bad_image_gets_a_4xx_and_the_server_keeps_serving(http: httpx.Client) -> None:
    truncated = image_bytes("JPEG", size=(64, 64))[:200]
    response = http.post(
        "/v1/models/tiny-vit/predict", content=truncated, headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 422 and "input 0" in response.json()["error"]["message"]
    again = http.post(
        "/v1/models/tiny-vit/predict", content=image_bytes(), headers={"Content-Type": "image/png"}
    )
    assert again.status_code == 200


def test_sigterm_stops_the_server_cleanly(
    tmp_path_factory: pytest.TempPathFactory, e2e_models_dir: object
) -> None:
    folder = tmp_path_factory.mktemp("sigterm-models")
    (folder / "tiny-vit.yaml").write_text(
        (e2e_models_dir / "tiny-vit.yaml").read_text()  # type: ignore[operator]
    )
    running = start_server(
        folder,
        tmp_path_factory.mktemp("sigterm") / "var",
        env={"MAAS_ADMIN_KEY": "mk_sigterm_test_key_0000000000000000"},
    )
    # uvicorn shuts down gracefully, then re-raises SIGTERM so supervisors see why it stopped
    assert running.stop() in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in running.log()
    assert "mk_sigterm_test_key" not in running.log()


def test_concurrent_requests_share_batches_and_each_gets_its_own_answer(
    server: Server, admin_key: str
) -> None:
    colours = [(i * 10 % 256, 255 - i * 7 % 256, i * 37 % 256) for i in range(24)]
    images = [image_bytes(color=c) for c in colours]
    headers = {"Authorization": f"Bearer {admin_key}", "Content-Type": "image/png"}
    url = "/v1/models/tiny-vit-batched/predict?top_k=3"

    async def fire() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60, headers=headers) as http:
            alone = [await http.post(url, content=image) for image in images]
            together = await asyncio.gather(*(http.post(url, content=image) for image in images))
            return alone, list(together)

    def batches() -> tuple[float, float]:
        text = httpx.get(f"{server.base_url}/metrics").text
        count = sum_ = 0.0
        for line in text.splitlines():
            if line.startswith('maas_batch_size_count{model="tiny-vit-batched"}'):
                count = float(line.split()[-1])
            if line.startswith('maas_batch_size_sum{model="tiny-vit-batched"}'):
                sum_ = float(line.split()[-1])
        return count, sum_

    alone, together = asyncio.run(fire())
    count, inputs = batches()
    assert inputs == 48  # every input went through exactly one forward pass
    assert count < 24 + 24 / 2, "concurrent requests should have shared forward passes"
    for single, batched in zip(alone, together, strict=True):
        assert batched.status_code == 200
        a, b = single.json()["predictions"][0], batched.json()["predictions"][0]
        assert [p["label"] for p in a] == [p["label"] for p in b]
        assert [p["score"] for p in a] == pytest.approx([p["score"] for p in b], abs=1e-4)


SLOW_MODEL = """
import time
import torch

class Slow(torch.nn.Module):
    # a user model whose forward pass takes a second, so that requests queue up behind it
    def forward(self, x):
        time.sleep(1.0)
        return torch.zeros(x.shape[0], 2)

def build():
    return Slow()
"""


# the default (one worker per core) and one process (one core, or MAAS_WORKERS=1) drain differently
@pytest.mark.parametrize("workers", ["auto", "1"])
def test_sigterm_finishes_every_queued_request_before_exiting(
    tmp_path_factory: pytest.TempPathFactory, workers: str
) -> None:
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import write_manifest
    from tests.e2e.conftest import start_server

    folder = tmp_path_factory.mktemp("drain-models")
    (folder / "slow").mkdir()
    (folder / "slow" / "build.py").write_text(SLOW_MODEL)
    (folder / "slow" / "labels.txt").write_text("yes\nno\n")
    write_manifest(
        folder,
        "slow",
        """
        name: slow
        task: image-classification
        adapter: torch
        source: slow
        entrypoint: build.py:build
        labels: labels.txt
        preprocess: {resize: 8, crop_size: 8}
        batching: {max_batch_size: 1, max_delay_ms: 1}
    """,
    )
    key = "mk_drain_test_key_000000000000000000"
    # one batch at a time (a second-long pass would otherwise run a batch per core at once,
    # docs/serving.md "Intra-op threads on a CPU"), so that two requests queue behind the first
    env = {"MAAS_ADMIN_KEY": key, "MAAS_WORKERS": workers, "MAAS_TORCH_THREADS": "1"}
    running = start_server(folder, tmp_path_factory.mktemp("drain") / "var", env=env)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "image/png"}

    def post() -> int:
        with httpx.Client(base_url=running.base_url, timeout=60) as http:
            return http.post("/v1/models/slow/predict", content=image_bytes(), headers=headers).status_code

    with ThreadPoolExecutor(3) as pool:
        answers = [pool.submit(post) for _ in range(3)]
        deadline = time.monotonic() + 30
        while 'maas_queue_depth{model="slow"} 2.0' not in httpx.get(f"{running.base_url}/metrics").text:
            assert time.monotonic() < deadline, "two requests never queued behind the first"
        code = running.stop()  # SIGTERM: one request on the model, two in its queue
        assert [a.result() for a in answers] == [200, 200, 200]
    assert code in (0, -signal.SIGTERM)
