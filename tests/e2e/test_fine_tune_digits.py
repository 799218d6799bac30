"""The headline: through the HTTP API of a real `maas serve`, fine-tune an untrained ViT on
scikit-learn's digits (rendered as PNGs, zipped, uploaded) to >= 90 % validation accuracy,
then call the fine-tuned model as its tenant (200) and as another tenant (404)."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import write_manifest
from tests.e2e.conftest import Server, start_server, tenant_key, wait_until_finished
from tests.shipped import digit_images, save_untrained_digits_vit, training_script

pytestmark = pytest.mark.e2e
ADMIN = "mk_e2e_fine_tune_admin_key_0123456789abcdef"
PER_LABEL = 150  # 1,500 images: 1,200 to train, 300 (stratified 20 %) to validate
EPOCHS = 30
DEADLINE_S = 600


def digits_zip() -> bytes:
    """The first PER_LABEL digits of each class as `<digit>/<n>.png`, rendered as for the digits model."""
    from sklearn.datasets import load_digits

    script = training_script()
    digits = load_digits()
    seen = dict.fromkeys(range(10), 0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for n, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
            if seen[int(target)] < PER_LABEL:
                seen[int(target)] += 1
                image = io.BytesIO()
                script.digit_to_image(pixels).save(image, format="PNG")
                archive.writestr(f"{int(target)}/{n}.png", image.getvalue())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def scratch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A gateway whose only model is an UNTRAINED ViT (the digits model's architecture, random
    weights, two labels of another task): the fine-tune learns digits from scratch."""
    root = tmp_path_factory.mktemp("fine-tune-e2e")
    base = save_untrained_digits_vit(root / "scratch-vit")
    models = root / "models"
    models.mkdir()
    write_manifest(models, "scratch-vit", f"name: scratch-vit\ntask: image-classification\nsource: {base}\n")
    server = start_server(models, root / "var", env={"MAAS_ADMIN_KEY": ADMIN})
    yield server
    server.stop()


def test_fine_tune_digits_to_90_percent_and_serve_to_the_tenant_only(scratch_server: Server) -> None:
    url = scratch_server.base_url
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as admin:
        acme, other = tenant_key(admin, "acme"), tenant_key(admin, "other")
    mine = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {acme}"}, timeout=60)
    theirs = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {other}"}, timeout=60)
    with mine, theirs:
        started = time.monotonic()
        uploaded = mine.post(
            "/v1/files",
            files={"file": ("digits.zip", digits_zip(), "application/zip")},
            data={"purpose": "fine-tune"},
        )
        assert uploaded.status_code == 201, uploaded.text
        assert uploaded.json()["summary"]["labels"] == [str(d) for d in range(10)]
        made = mine.post(
            "/v1/fine-tunes",
            json={
                "base_model": "scratch-vit",
                "training_file": uploaded.json()["id"],
                "hyperparameters": {"epochs": EPOCHS, "learning_rate": 0.002, "batch_size": 32},
                "suffix": "digits",
            },
        )
        assert made.status_code == 201, made.text
        job_id = made.json()["id"]
        job = wait_until_finished(mine, job_id, DEADLINE_S)
        elapsed = time.monotonic() - started
        assert job["status"] == "succeeded", (job, mine.get(f"/v1/fine-tunes/{job_id}/events").text)
        accuracy = job["metrics"]["validation_accuracy"]
        print(
            f"\ndigits fine-tune: validation accuracy {accuracy:.4f} on "
            f"{job['metrics']['validation_samples']} images, {elapsed:.1f}s upload-to-served, "
            f"{job['usage']['device_seconds']:.1f} device-seconds"
        )
        assert accuracy >= 0.9

        model = job["fine_tuned_model"]
        images, labels = digit_images(20)
        answered = mine.post(
            f"/v1/models/{model}/predict", files=[("file", ("d.png", b, "image/png")) for b in images[:8]]
        )
        assert answered.status_code == 200, answered.text
        top = [p[0]["label"] for p in answered.json()["predictions"]]
        assert sum(t == str(y) for t, y in zip(top, labels[:8], strict=True)) >= 6
        refused = theirs.post(
            f"/v1/models/{model}/predict", content=images[0], headers={"Content-Type": "image/png"}
        )
        assert refused.status_code == 404
        assert refused.json()["error"]["type"] == "not_found"
