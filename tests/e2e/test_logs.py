"""`maas serve --log-format json` for real: every line on stderr is a JSON object, requests get
an access line, and the admin key never shows."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import image_bytes, write_manifest
from tests.e2e.conftest import start_server

pytestmark = pytest.mark.e2e

KEY = "mk_e2e_logs_admin_key_0123456789abcdef"


def test_json_logs_from_a_real_server(tmp_path: Path, tiny_vit_dir: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    manifest = f"name: tiny-vit\ntask: image-classification\nsource: {tiny_vit_dir}\n"
    write_manifest(models, "tiny-vit", manifest)
    server = start_server(models, tmp_path / "var", env={"MAAS_LOG_FORMAT": "json", "MAAS_ADMIN_KEY": KEY})
    try:
        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"}) as http:
            ok = http.post(
                "/v1/models/tiny-vit/predict", content=image_bytes(), headers={"Content-Type": "image/png"}
            )
            denied = http.get("/v1/models", headers={"Authorization": "Bearer mk_wrong_0123456789"})
    finally:
        assert server.stop() in (0, -signal.SIGTERM)
    assert ok.status_code == 200 and denied.status_code == 401
    text = server.log()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    access = {line["request_id"]: line for line in lines if line.get("event") == "access"}
    line = access[ok.headers["x-request-id"]]
    assert (line["status"], line["model"], line["tenant"]) == (200, "tiny-vit", "default")
    assert access[denied.headers["x-request-id"]]["status"] == 401
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's own lines too
    assert not any(line.get("path") == "/readyz" for line in lines)  # probes only at debug level
    assert KEY not in text and "mk_wrong_0123456789" not in text
