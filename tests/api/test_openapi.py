"""/openapi.json: a valid OpenAPI 3.1 document in which every route declares its answer, its error
answers in the shape it really draws them, and the Bearer scheme; the real answers match the
declared models field for field; a 405 says which methods the path allows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel

from service.api import schemas
from service.protocols import openai, v2
from tests.api.test_fine_tuning import create_job, upload, wait_for
from tests.conftest import Gateway, image_bytes
from tests.training.zips import colour_dataset

pytestmark = pytest.mark.anyio
UNAUTHENTICATED = {"/healthz", "/readyz", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready"}


async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    answer = await client.get("/openapi.json")
    assert answer.status_code == 200
    schema: dict[str, Any] = answer.json()
    return schema


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


def error_schema_of(path: str) -> str:
    if path == "/v1/embeddings":
        return openai.OpenAIError.__name__
    return v2.V2Error.__name__ if path.startswith("/v2") else schemas.Error.__name__


async def test_the_schema_is_valid_openapi_3_1(client: httpx.AsyncClient) -> None:
    schema = await openapi(client)
    assert schema["openapi"].startswith("3.1")
    validate(schema)  # raises on the first problem


async def test_every_route_declares_its_answer_its_errors_and_its_key(client: httpx.AsyncClient) -> None:
    schema = await openapi(client)
    assert schema["components"]["securitySchemes"] == {
        "HTTPBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: `Authorization: Bearer <key>`.",
        }
    }
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # 422 is drawn in our shape
    for path, method, op in operations(schema):
        where = f"{method.upper()} {path}"
        answers = op["responses"]
        success = [s for s in answers if s.startswith("2")]
        assert len(success) == 1 and answers[success[0]].get("content"), where
        for content in answers[success[0]]["content"].values():
            assert content["schema"] != {}, where  # a real model (or a string), not "anything"
        if path in UNAUTHENTICATED:
            assert "security" not in op, where
            continue
        assert op["security"] == [{"HTTPBearer": []}], where
        for status in ("401", "403", "422"):
            ref = answers[status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/" + error_schema_of(path)), (where, status, ref)


def fields_match(model: type[BaseModel], body: dict[str, Any]) -> None:
    """`body` validates against `model` and has no field the model does not name."""
    model.model_validate(body)
    assert set(body) <= set(model.model_fields), (model.__name__, set(body) - set(model.model_fields))


async def test_real_answers_match_the_declared_models(gateway: Gateway) -> None:
    async with gateway.client() as admin:
        tenant = await admin.post("/v1/admin/tenants", json={"name": "acme", "rate_limit_rps": 50})
        fields_match(schemas.Tenant, tenant.json())
        made = await admin.post("/v1/admin/tenants/acme/keys", json={"name": "ci"})
        fields_match(schemas.NewApiKey, made.json())
        fields_match(schemas.ApiKeyList, (await admin.get("/v1/admin/tenants/acme/keys")).json())
        rotated = await admin.post(f"/v1/admin/keys/{made.json()['id']}/rotate", json={"grace_seconds": 60})
        fields_match(schemas.RotatedApiKey, rotated.json())
        fields_match(schemas.ModelList, (await admin.get("/v1/models")).json())
        fields_match(schemas.Readiness, (await admin.get("/readyz")).json())
    async with gateway.client(rotated.json()["key"]) as acme:
        predicted = await acme.post(
            "/v1/models/tiny-vit/predict", files=[("file", ("a.png", image_bytes(), "image/png"))]
        )
        assert predicted.status_code == 200, predicted.text
        fields_match(schemas.Prediction, predicted.json())
        fields_match(schemas.Usage, predicted.json()["usage"])
        fields_match(schemas.KeyIdentity, (await acme.get("/v1/me")).json())
        usage = await acme.get("/v1/usage", params={"group_by": "model,day,key"})
        fields_match(schemas.UsageReport, usage.json())
        for row in usage.json()["data"]:
            fields_match(schemas.UsageRow, row)
        missing = await acme.get("/v1/models/nope")
        assert missing.status_code == 404
        fields_match(schemas.Error, missing.json())
        invalid = await acme.post("/v1/models/tiny-vit/predict", params={"top_k": "many"})
        assert invalid.status_code == 422
        fields_match(schemas.Error, invalid.json())
    async with gateway.client() as admin:
        period = datetime.now(UTC).strftime("%Y-%m")
        export = await admin.get("/v1/admin/billing/export", params={"period": period})
        fields_match(schemas.BillingExport, export.json())
        for line in export.json()["lines"]:
            fields_match(schemas.InvoiceLine, line)


async def test_fine_tuning_answers_match_the_declared_models(gateway: Gateway) -> None:
    async with gateway.client() as admin:
        await admin.post("/v1/admin/tenants", json={"name": "acme"})
        key = (await admin.post("/v1/admin/tenants/acme/keys", json={})).json()["key"]
    async with gateway.client(key) as acme:
        uploaded = await upload(acme, colour_dataset(per_label=5))
        assert uploaded.status_code == 201, uploaded.text
        fields_match(schemas.DatasetFile, uploaded.json())
        fields_match(schemas.FileList, (await acme.get("/v1/files")).json())
        job = await create_job(acme, uploaded.json()["id"], epochs=1)
        fields_match(schemas.FineTuneJob, job)
        done = await wait_for(acme, job["id"], {"succeeded", "failed"})
        fields_match(schemas.FineTuneJob, done)
        fields_match(schemas.FineTuneJobList, (await acme.get("/v1/fine-tunes")).json())
        events = (await acme.get(f"/v1/fine-tunes/{job['id']}/events")).json()
        fields_match(schemas.JobEventList, events)
        assert events["data"], events
        fields_match(schemas.DeletedFile, (await acme.delete(f"/v1/files/{uploaded.json()['id']}")).json())


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/files", "GET, POST"),  # two routes on one path: both named
        ("GET", "/v1/models/tiny-vit/predict", "POST"),
        ("DELETE", "/v1/admin/tenants/acme", "GET, PATCH"),
        ("POST", "/v2/health/live", "GET"),
        ("GET", "/v1/embeddings", "POST"),
    ],
)
async def test_a_405_names_every_method_the_path_allows(
    client: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    answer = await client.request(method, path)
    assert answer.status_code == 405
    assert answer.headers["Allow"] == allowed
    if path.startswith("/v2"):  # in the protocol's shape
        assert answer.json() == {"error": "Method Not Allowed"}
    elif path == "/v1/embeddings":
        assert answer.json()["error"]["code"] == "method_not_allowed"
    else:
        assert answer.json()["error"]["type"] == "method_not_allowed"
