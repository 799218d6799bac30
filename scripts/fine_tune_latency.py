#!/usr/bin/env python
"""Inference latency while a fine-tuning job trains on the same device, against idle.

Starts a real `maas serve` (CPU) with the shipped `digits-vit` and an untrained ViT base,
measures the p50/p95 of sequential single-image predictions on `digits-vit` while nothing
else runs, then again while a fine-tuning job (digits, from scratch) trains, and prints both
as JSON. Run from the repository root:

    python scripts/fine_tune_latency.py --requests 300 [--maas-env MAAS_FINE_TUNE_THREADS=2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "loadtests"))  # the load tests' siblings import flat

from servers import gateway_settings  # noqa: E402

from tests.conftest import write_manifest  # noqa: E402
from tests.e2e.conftest import start_server  # noqa: E402
from tests.e2e.test_fine_tune_digits import digits_zip  # noqa: E402
from tests.shipped import digit_images, save_untrained_digits_vit  # noqa: E402

ADMIN = "mk_latency_script_admin_key_0123456789abcdef"


def latencies(http: httpx.Client, image: bytes, count: int) -> list[float]:
    taken = []
    for _ in range(count):
        started = time.perf_counter()
        answer = http.post(
            "/v1/models/digits-vit/predict", content=image, headers={"Content-Type": "image/png"}
        )
        taken.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
    return taken


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1], 2),
        "n": len(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument(
        "--maas-env",
        action="append",
        default=[],
        metavar="MAAS_NAME=VALUE",
        help="a setting of the server (repeatable)",
    )
    args = parser.parse_args()
    settings = gateway_settings(parser, args.maas_env)

    root = Path(tempfile.mkdtemp(prefix="maas-ft-latency-"))
    base = save_untrained_digits_vit(root / "scratch-vit")
    models = root / "models"
    models.mkdir()
    write_manifest(models, "scratch-vit", f"name: scratch-vit\ntask: image-classification\nsource: {base}\n")
    write_manifest(
        models,
        "digits-vit",
        f"name: digits-vit\ntask: image-classification\nsource: {REPO / 'models/digits-vit'}\n",
    )
    server = start_server(models, root / "var", env={**settings, "MAAS_ADMIN_KEY": ADMIN})
    try:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=server.base_url, headers=auth, timeout=60) as http:
            image = digit_images(1)[0][0]
            latencies(http, image, 20)  # warm-up
            idle = latencies(http, image, args.requests)
            dataset = {"file": ("digits.zip", digits_zip(), "application/zip")}
            file_id = http.post("/v1/files", files=dataset, data={"purpose": "fine-tune"}).json()["id"]
            job = http.post(
                "/v1/fine-tunes",
                json={
                    "base_model": "scratch-vit",
                    "training_file": file_id,
                    "hyperparameters": {"epochs": 1000, "learning_rate": 0.002, "batch_size": 32},
                },
            ).json()
            while (status := http.get(f"/v1/fine-tunes/{job['id']}").json())["status"] == "queued":
                time.sleep(0.1)
            before = status["progress"]["steps_done"]
            training = latencies(http, image, args.requests)
            after = http.get(f"/v1/fine-tunes/{job['id']}").json()
            http.post(f"/v1/fine-tunes/{job['id']}/cancel")
        result = {
            "idle": summary(idle),
            "while_training": summary(training),
            "job_status_during": after["status"],
            "training_steps_during_measurement": after["progress"]["steps_done"] - before,
        }
        result["p50_ratio"] = round(result["while_training"]["p50_ms"] / result["idle"]["p50_ms"], 2)
        print(json.dumps(result, indent=2))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
