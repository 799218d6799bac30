"""`compile: true` seen through the API: the model detail says whether the model runs compiled,
and why not where it cannot be."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings
from tests.conftest import image_bytes, started_client, write_manifest

pytestmark = pytest.mark.anyio


async def test_a_model_that_cannot_compile_serves_eagerly_and_its_detail_says_why(
    settings: Settings, models_dir: Path, tiny_vit_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no C++ compiler on this machine
    write_manifest(
        models_dir,
        "compiled-vit",
        f"""
        name: compiled-vit
        task: image-classification
        source: {tiny_vit_dir}
        compile: true
        """,
    )
    async with started_client(settings) as http:
        detail = (await http.get("/v1/models/compiled-vit")).json()
        assert detail["status"] == "ready"
        assert detail["compile"]["active"] is False
        assert "C++ compiler" in detail["compile"]["reason"]
        answer = await http.post(
            "/v1/models/compiled-vit/predict",
            content=image_bytes("JPEG"),
            headers={"Content-Type": "image/jpeg"},
        )
        assert answer.status_code == 200, answer.text
        assert (await http.get("/v1/models/tiny-vit")).json()["compile"] is None  # not asked for
