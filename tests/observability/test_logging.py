"""Structured logs: one access line per request with id, tenant, model, status and latency;
JSON or text; and no API key in any line, whatever was logged."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from service.observability.logs import JsonFormatter, RequestContextFilter, TextFormatter, configure_logging
from service.redaction import redact
from tests.conftest import ADMIN_KEY, image_bytes

pytestmark = pytest.mark.anyio


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything logged during the test, as the JSON lines `maas serve --log-format json` writes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _access(stream: io.StringIO, path: str) -> list[dict[str, object]]:
    return [line for line in _lines(stream) if line.get("event") == "access" and line["path"] == path]


async def test_a_predict_request_logs_one_access_line_with_its_id_tenant_model_status_latency(
    client: httpx.AsyncClient, json_log: io.StringIO
) -> None:
    response = await client.post(
        "/v1/models/tiny-vit/predict", content=image_bytes(), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200, response.text
    [line] = _access(json_log, "/v1/models/tiny-vit/predict")
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["status"] == 200 and line["method"] == "POST" and line["model"] == "tiny-vit"
    assert line["tenant"] == "default" and line["tenant_id"] and line["key_id"]
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] > 0
    assert line["level"] == "info" and line["logger"] == "maas.access" and "time" in line


async def test_errors_are_logged_with_their_status_and_no_tenant_when_unauthenticated(
    client: httpx.AsyncClient, json_log: io.StringIO
) -> None:
    unknown = await client.post(
        "/v1/models/tiny-vit/predict",
        content=image_bytes(),
        headers={"Content-Type": "image/png", "Authorization": "Bearer mk_not_a_real_key_0123456789"},
    )
    assert unknown.status_code == 401
    missing = await client.get("/v1/models/no-such-model")
    assert missing.status_code == 404
    first, second = _access(json_log, "/v1/models/tiny-vit/predict") + _access(
        json_log, "/v1/models/no-such-model"
    )
    assert (first["status"], first["tenant"], first["model"]) == (401, None, "tiny-vit")
    assert first["request_id"] == unknown.headers["x-request-id"]
    assert (second["status"], second["tenant"]) == (404, "default")


async def test_no_key_appears_in_the_logs_json_or_text(
    client: httpx.AsyncClient, json_log: io.StringIO
) -> None:
    wrong_key = "mk_wrong_key_that_must_not_be_logged_42"
    await client.get("/v1/models")
    await client.post(
        "/v1/models/tiny-vit/predict", content=image_bytes(), headers={"Content-Type": "image/png"}
    )
    await client.get("/v1/models", headers={"Authorization": f"Bearer {wrong_key}"})
    await client.get(f"/v1/models?key={wrong_key}")
    # and a careless log call somewhere in the code base
    logging.getLogger("service.somewhere").warning("got header Bearer %s", ADMIN_KEY, extra={"k": ADMIN_KEY})
    text = json_log.getvalue()
    assert _access(json_log, "/v1/models") and "got header" in text
    assert ADMIN_KEY not in text and wrong_key not in text
    assert ADMIN_KEY[3:] not in text and wrong_key[3:] not in text
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s", (ADMIN_KEY,), None)
    assert ADMIN_KEY not in TextFormatter().format(record)


def test_redact_masks_keys_and_bearer_tokens_and_keeps_the_rest() -> None:
    assert redact("key=mk_abc-DEF_123 ok") == "key=mk_[redacted] ok"
    assert redact("Authorization: Bearer sometoken") == "Authorization: Bearer [redacted]"
    assert redact("model tiny-vit ready in 0.2 s") == "model tiny-vit ready in 0.2 s"


def test_configure_logging_writes_json_lines_with_the_level_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # restored after the test, with pytest's own handlers
    monkeypatch.setattr(root, "level", root.level)
    stream = io.StringIO()
    configure_logging("warning", "json", stream)
    logging.getLogger("service.test").info("hidden")
    logging.getLogger("uvicorn.error").warning("shown %d", 1)
    [line] = _lines(stream)
    assert line["message"] == "shown 1" and line["level"] == "warning" and line["logger"] == "uvicorn.error"
    configure_logging("info", "text", stream)
    logging.getLogger("service.test").info("plain", extra={"model": "m"})
    assert stream.getvalue().splitlines()[-1].endswith("INFO service.test: plain model=m")
