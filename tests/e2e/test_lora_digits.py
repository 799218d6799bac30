"""LoRA through the HTTP API of a real `maas serve`: the shipped digits model, which has never
seen inverted digits (dark ink on light paper) and mostly gets them wrong, is adapted to them with
a LoRA adapter of a few tens of kB; the adapter is served over the shared base at once."""

from __future__ import annotations

import io
import random
import time
import zipfile
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image, ImageOps

from tests.conftest import REPO, write_manifest
from tests.e2e.conftest import Server, start_server, wait_until_finished
from tests.shipped import training_script

pytestmark = pytest.mark.e2e
ADMIN = "mk_e2e_lora_admin_key_0123456789abcdef01"
PER_LABEL = 150  # 1,500 images: 80 held out as probes; of the rest, 20 % (stratified) validates
EPOCHS = 10
DEADLINE_S = 300


def inverted_digits() -> list[tuple[int, bytes]]:
    """The first PER_LABEL digits of each class, rendered as for the digits model, then inverted."""
    from sklearn.datasets import load_digits

    script = training_script()
    digits = load_digits()
    seen = dict.fromkeys(range(10), 0)
    found: list[tuple[int, bytes]] = []
    for pixels, target in zip(digits.images, digits.target, strict=True):
        if seen[int(target)] < PER_LABEL:
            seen[int(target)] += 1
            image: Image.Image = ImageOps.invert(script.digit_to_image(pixels).convert("RGB"))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            found.append((int(target), buffer.getvalue()))
    return found


def as_zip(examples: list[tuple[int, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for n, (label, png) in enumerate(examples):
            archive.writestr(f"{label}/{n}.png", png)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digits_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("lora-e2e")
    models = root / "models"
    models.mkdir()
    write_manifest(
        models,
        "digits-vit",
        f"""
        name: digits-vit
        task: image-classification
        source: {REPO / "models" / "digits-vit"}
        price: {{per_image: 0.00001, per_training_sample: 0.000001}}
    """,
    )
    server = start_server(models, root / "var", env={"MAAS_ADMIN_KEY": ADMIN})
    yield server
    server.stop()


def accuracy(http: httpx.Client, model: str, examples: list[tuple[int, bytes]]) -> float:
    right = 0
    for start in range(0, len(examples), 8):
        chunk = examples[start : start + 8]
        answer = http.post(
            f"/v1/models/{model}/predict?top_k=1",
            files=[("file", ("d.png", png, "image/png")) for _, png in chunk],
        )
        assert answer.status_code == 200, answer.text
        right += sum(
            p[0]["label"] == str(label)
            for p, (label, _) in zip(answer.json()["predictions"], chunk, strict=True)
        )
    return right / len(examples)


def test_a_lora_adapter_teaches_the_digits_model_inverted_digits(digits_server: Server) -> None:
    examples = inverted_digits()
    random.Random(1).shuffle(examples)
    probe, uploaded_examples = examples[:80], examples[80:]  # 80 never trained on, checked before and after
    with httpx.Client(
        base_url=digits_server.base_url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60
    ) as http:
        before = accuracy(http, "digits-vit", probe)
        started = time.monotonic()
        uploaded = http.post(
            "/v1/files",
            files={"file": ("inverted.zip", as_zip(uploaded_examples), "application/zip")},
            data={"purpose": "fine-tune"},
        )
        assert uploaded.status_code == 201, uploaded.text
        made = http.post(
            "/v1/fine-tunes",
            json={
                "base_model": "digits-vit",
                "training_file": uploaded.json()["id"],
                "method": "lora",
                "hyperparameters": {"epochs": EPOCHS, "learning_rate": 0.01, "batch_size": 32},
                "suffix": "inverted",
            },
        )
        assert made.status_code == 201, made.text
        job_id = made.json()["id"]
        job = wait_until_finished(http, job_id, DEADLINE_S)
        elapsed = time.monotonic() - started
        assert job["status"] == "succeeded", (job, http.get(f"/v1/fine-tunes/{job_id}/events").text)
        validation = job["metrics"]["validation_accuracy"]
        after = accuracy(http, job["fine_tuned_model"], probe)
        adapter = (
            (digits_server.data_dir / "models" / job["fine_tuned_model"] / "adapter_model.safetensors")
            .stat()
            .st_size
        )
        base = (REPO / "models" / "digits-vit" / "model.safetensors").stat().st_size
        print(
            f"\nLoRA on inverted digits: base {before:.3f} -> adapted {after:.3f} on {len(probe)} probes; "
            f"validation accuracy {validation:.4f} on {job['metrics']['validation_samples']} images; "
            f"{elapsed:.1f}s upload-to-served, {job['usage']['device_seconds']:.1f} device-seconds; "
            f"adapter {adapter} bytes, base {base} bytes"
        )
        assert before < 0.5  # the base model really does not know inverted digits
        assert validation >= 0.85 and after >= 0.85
        assert adapter * 10 < base
