"""Text the database cannot store (a NUL byte, a lone surrogate) anywhere in a request, and keys
pasted where a name or an id goes, on SQLite and PostgreSQL: a 4xx in the one error shape,
nothing stored, the key never echoed, and another tenant's requests unaffected."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import UsageEvent
from service.settings import Settings
from tests.api.test_usage import tenant_key
from tests.conftest import Gateway, image_bytes
from tests.training.zips import colour_dataset

pytestmark = pytest.mark.anyio

PNG = {"Content-Type": "image/png"}
PASTED_KEY = "mk_PastedIntoTheWrongPlace0123456789"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # a group-commit window, so that concurrent requests' usage events share transactions
    return settings.model_copy(update={"usage_flush_ms": 20.0})


def error_message(response: httpx.Response, status: int, error_type: str) -> str:
    """`response` is `status` in the one error shape; its message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message", "request_id"} and error["type"] == error_type
    assert error["request_id"] == response.headers["x-request-id"]
    message: str = error["message"]
    return message


def usage_rows(gateway: Gateway) -> list[UsageEvent]:
    sessions: sessionmaker[Session] = gateway.app.state.gateway.sessions
    with sessions() as session:
        return list(session.scalars(select(UsageEvent)))


def raw_json(body: Any) -> dict[str, Any]:
    """A JSON body as bytes, escapes kept (httpx cannot encode a lone surrogate itself)."""
    return {"content": json.dumps(body).encode(), "headers": {"Content-Type": "application/json"}}


NUL_IN_THE_URL = [
    ("POST", "/v1/models/%00/predict", "model"),
    ("POST", "/v1/models/tiny-vit%00/predict", "model"),
    ("GET", "/v1/models/%00", "model"),
    ("GET", "/v1/files/file_%00", "file_id"),
    ("DELETE", "/v1/files/%00", "file_id"),
    ("GET", "/v1/fine-tunes/%00", "job_id"),
    ("GET", "/v1/fine-tunes/%00/events", "job_id"),
    ("POST", "/v1/fine-tunes/%00/cancel", "job_id"),
    ("GET", "/v1/admin/tenants/%00", "tenant"),
    ("POST", "/v1/admin/tenants/%00/suspend", "tenant"),
    ("GET", "/v1/admin/tenants/%00/keys", "tenant"),
    ("DELETE", "/v1/admin/keys/key_%00", "key_id"),
    ("POST", "/v1/admin/keys/%00/rotate", "key_id"),
    ("GET", "/v1/admin/usage?tenant=%00", "tenant"),
    ("GET", "/v1/admin/usage?tenant=acme%00", "tenant"),
    ("GET", "/v1/usage?group_by=model%00", "group_by"),
    ("GET", "/v1/admin/billing/export?period=%00", "period"),
    ("POST", "/v1/models/tiny-vit/predict?top_k=%00", "top_k"),
    ("GET", "/v1/models?%00=1", "\\x00"),
]


async def test_a_nul_byte_in_a_path_or_query_parameter_is_400(gateway: Gateway) -> None:
    async with gateway.client() as admin:
        for method, url, parameter in NUL_IN_THE_URL:
            response = await admin.request(method, url, content=image_bytes(), headers=PNG)
            message = error_message(response, 400, "invalid_request")
            assert f"parameter '{parameter}'" in message and "NUL" in message, (url, message)
    assert usage_rows(gateway) == []  # refused before any route ran: nothing to meter


BAD_JSON_STRINGS = [
    ("/v1/admin/tenants", {"name": "acme\x00"}, "name"),
    ("/v1/admin/tenants", {"name": "acme", "allowed_models": ["tiny-vit", "\x00"]}, "allowed_models.1"),
    ("/v1/admin/tenants", {"name": "acme", "allowed_models": ["\ud800"]}, "allowed_models.0"),
    ("/v1/admin/tenants/default/keys", {"name": "ci\x00"}, "name"),
    ("/v1/admin/tenants/default/keys", {"models": ["\x00"]}, "models.0"),
    ("/v1/admin/tenants/default/keys", {"scopes": ["inference\x00"]}, "scopes.0"),
    ("/v1/fine-tunes", {"base_model": "tiny-vit\x00", "training_file": "file_x"}, "base_model"),
    ("/v1/fine-tunes", {"base_model": "tiny-vit", "training_file": "file_\x00"}, "training_file"),
    (
        "/v1/fine-tunes",
        {"base_model": "x", "training_file": "f", "validation_file": "\x00"},
        "validation_file",
    ),
    ("/v1/fine-tunes", {"base_model": "x", "training_file": "f", "suffix": "a\x00"}, "suffix"),
    ("/v1/fine-tunes", {"base_model": "x", "training_file": "f", "suffix": "a\ud800"}, "suffix"),
]


async def test_text_the_database_refuses_in_a_json_body_is_422(gateway: Gateway) -> None:
    async with gateway.client() as admin:

        async def stored() -> list[Any]:
            paths = ("/v1/admin/tenants", "/v1/admin/tenants/default/keys", "/v1/fine-tunes")
            return [(await admin.get(path)).json()["data"] for path in paths]

        before = await stored()
        for url, body, field in BAD_JSON_STRINGS:
            response = await admin.post(url, **raw_json(body))
            assert f"body.{field}:" in error_message(response, 422, "invalid_input"), (url, body)
        assert await stored() == before


def multipart_upload(filename: bytes, data: bytes) -> dict[str, Any]:
    """A multipart body written out by hand: httpx would percent-encode the name's NUL byte."""
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: application/zip\r\n\r\n" + data + b"\r\n"
        b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--B--\r\n'
    )
    return {"content": body, "headers": {"Content-Type": "multipart/form-data; boundary=B"}}


async def test_an_upload_whose_name_holds_a_nul_byte_is_422_and_leaves_no_file(
    gateway: Gateway, settings: Settings
) -> None:
    kept = settings.data_dir / "files"
    async with gateway.client() as admin:
        refused = await admin.post("/v1/files", **multipart_upload(b"colours\x00.zip", colour_dataset()))
        assert "name holds a NUL byte" in error_message(refused, 422, "invalid_input")
        assert (await admin.get("/v1/files")).json()["data"] == []
        assert not kept.exists() or list(kept.rglob("*")) == [p for p in kept.rglob("*") if p.is_dir()]
        fine = await admin.post("/v1/files", **multipart_upload(b"colours.zip", colour_dataset()))
        assert fine.status_code == 201, fine.text
        assert [p.name for p in kept.rglob("*.zip")] == [f"{fine.json()['id']}.zip"]


async def test_a_key_pasted_where_a_name_or_an_id_goes_is_never_echoed_or_stored(gateway: Gateway) -> None:
    key = await tenant_key(gateway, "acme")
    async with gateway.client(key) as acme:
        answers = [
            await acme.post(f"/v1/models/{PASTED_KEY}/predict", content=image_bytes(), headers=PNG),
            await acme.get(f"/v1/models/{PASTED_KEY}"),
            await acme.get(f"/v1/files/{PASTED_KEY}"),
            await acme.get(f"/v1/fine-tunes/{PASTED_KEY}"),
            await acme.get("/v1/usage", params={"group_by": PASTED_KEY}),
            await acme.post("/v1/fine-tunes", json={"base_model": PASTED_KEY, "training_file": "f"}),
        ]
    for answer in answers:
        assert 400 <= answer.status_code < 500, answer.text
        assert "PastedIntoTheWrongPlace" not in answer.text
        assert "mk_[redacted]" in answer.json()["error"]["message"]
    [event] = usage_rows(gateway)  # the predict's 404, metered with the key masked
    assert (event.status, event.model) == (404, "mk_[redacted]")


async def test_a_flood_of_bad_requests_from_one_tenant_leaves_another_tenant_at_100_percent(
    gateway: Gateway,
) -> None:
    alice, mallory = await tenant_key(gateway, "alice"), await tenant_key(gateway, "mallory")
    bad_requests = [
        ("/v1/models/%00/predict", image_bytes()),
        ("/v1/models/tiny-vit%00/predict", image_bytes()),
        ("/v1/models/tiny-vit/predict?top_k=%00", image_bytes()),
        (f"/v1/models/{PASTED_KEY}/predict", image_bytes()),
        ("/v1/models/no-such-model/predict", image_bytes()),
        ("/v1/models/tiny-vit/predict", b"not an image"),
    ]
    async with gateway.client(alice) as good, gateway.client(mallory) as bad:
        goods_done = asyncio.Event()

        async def good_one() -> int:
            response = await good.post("/v1/models/tiny-vit/predict", content=image_bytes(), headers=PNG)
            return response.status_code

        async def flood() -> list[int]:
            """Bad requests, one after another, for as long as the good ones run."""
            statuses: list[int] = []
            while not goods_done.is_set():
                for url, body in bad_requests:
                    statuses.append((await bad.post(url, content=body, headers=PNG)).status_code)
            return statuses

        floods = [asyncio.create_task(flood()) for _ in range(4)]
        good_statuses = await asyncio.gather(*(good_one() for _ in range(24)))
        goods_done.set()
        bad_statuses = [status for statuses in await asyncio.gather(*floods) for status in statuses]
    assert good_statuses == [200] * len(good_statuses)
    assert bad_statuses and all(400 <= s < 500 for s in bad_statuses), bad_statuses
    async with gateway.client() as admin:
        alice_id = (await admin.get("/v1/admin/tenants/alice")).json()["id"]
    events = usage_rows(gateway)
    alices = [e.status for e in events if e.tenant_id == alice_id]
    assert alices == [200] * len(good_statuses)  # every good request billed, none lost with a bad group
    mallorys = [e for e in events if e.tenant_id != alice_id]
    assert {e.status for e in mallorys} <= {404, 415, 422}  # URL-refused ones (400) are not metered
    assert not any("PastedIntoTheWrongPlace" in e.model for e in mallorys)
