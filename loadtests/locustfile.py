"""Realistic traffic against a running gateway, for Locust.

A simulated user mostly sends one photo as a raw JPEG body, sometimes a multipart request with 2-4
photos, and now and then lists the models, with a think time of 0.5-2 s between calls. The photos
are real (scikit-image's chelsea, astronaut and coffee, cropped and resized to 224-512 px, q90).

Settings, from the environment:

- `MAAS_BASE_URL`    the gateway (default `http://127.0.0.1:8000`; `--host` overrides it)
- `MAAS_API_KEY`     a bearer key (default: the contents of `./var/admin.key`)
- `MAAS_BENCH_MODEL` the model to call (default `efficientnet-lite0`)

Run it headless (50 users, 5 new users a second, 2 minutes, CSV files next to it):

    pip install -e '.[bench]'
    MAAS_API_KEY=$(cat var/admin.key) locust -f loadtests/locustfile.py --headless \\
        -u 50 -r 5 -t 2m --csv loadtests/out/locust

or without `--headless` for the web UI on http://127.0.0.1:8089. On a 2-core machine Locust shares
the CPU with the gateway: its numbers are for realism (mixed traffic, think time), while
benchmark.py measures throughput against the raw limit with a much lighter client.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from locust import HttpUser, between, task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import jpeg_bodies

MODEL = os.environ.get("MAAS_BENCH_MODEL", "efficientnet-lite0")
PHOTOS = jpeg_bodies(count=24, seed=1)


def _api_key() -> str:
    key = os.environ.get("MAAS_API_KEY")
    if key:
        return key
    stored = Path("var/admin.key")
    return stored.read_text(encoding="utf-8").strip() if stored.exists() else ""


class GatewayUser(HttpUser):
    """One client application calling the gateway with think time between calls."""

    host = os.environ.get("MAAS_BASE_URL", "http://127.0.0.1:8000")
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {_api_key()}"

    @task(10)
    def predict_one_jpeg(self) -> None:
        self.client.post(
            f"/v1/models/{MODEL}/predict?top_k=3",
            data=random.choice(PHOTOS),
            headers={"Content-Type": "image/jpeg"},
            name="predict (raw JPEG)",
        )

    @task(3)
    def predict_multipart(self) -> None:
        photos = random.sample(PHOTOS, random.randint(2, 4))
        files = [("file", (f"photo{i}.jpg", photo, "image/jpeg")) for i, photo in enumerate(photos)]
        with self.client.post(
            f"/v1/models/{MODEL}/predict?top_k=3",
            files=files,
            name="predict (multipart 2-4)",
            catch_response=True,
        ) as response:
            if response.status_code == 200 and len(response.json().get("predictions", [])) != len(photos):
                response.failure("not one prediction per image")

    @task(1)
    def list_models(self) -> None:
        self.client.get("/v1/models", name="models list")
