"""The SDK's types against the gateway's OpenAPI schema: every field a type reads is a property of
the answer's schema with a JSON type that the field's type hint can hold, and every property of
the schema is read by the type (but `object`, which only names the kind). They cannot drift."""

from __future__ import annotations

import dataclasses
import types
import typing
from decimal import Decimal
from typing import Any, Union

import pytest
from maas_client import types as sdk

from service.app import create_app
from service.settings import Settings

# SDK type -> the schema component of the answer it is built from
ANSWERS = {
    sdk.Prediction: "Prediction",
    sdk.Embeddings: "Prediction",
    sdk.Entities: "Prediction",
    sdk.Detections: "Prediction",
    sdk.Segments: "Prediction",
    sdk.Segment: "Segment",
    sdk.Mask: "Mask",
    sdk.Label: "Label",
    sdk.Entity: "Entity",
    sdk.Usage: "Usage",
    sdk.Model: "ModelInfo",
    sdk.KeyIdentity: "KeyIdentity",
    sdk.Tenant: "Tenant",
    sdk.APIKey: "RotatedApiKey",
    sdk.UsageRow: "UsageRow",
    sdk.UsageReport: "UsageReport",
    sdk.InvoiceLine: "InvoiceLine",
    sdk.BillingExport: "BillingExport",
    sdk.FileObject: "DatasetFile",
    sdk.FineTuneJob: "FineTuneJob",
    sdk.FineTuneProgress: "JobProgress",
    sdk.FineTuneUsage: "JobUsage",
    sdk.FineTuneEvent: "JobEvent",
    sdk.Batch: "Batch",
    sdk.BatchCounts: "BatchCounts",
}
# what the SDK leaves to `raw` on purpose
UNREAD = {
    "object",
    # one answer type per task: each SDK type reads its own task's key
    "Prediction.predictions",
    "Prediction.entities",
    "Prediction.embeddings",
    "Prediction.detections",
    "Prediction.segments",
    "BillingExport.currency_unit_micro",
}
# JSON types a field's type may be built from (`_parse`): Decimal from a decimal string or number
JSON_TYPES: dict[Any, set[str]] = {
    str: {"string"},
    int: {"integer"},
    float: {"number", "integer"},
    bool: {"boolean"},
    Decimal: {"string", "number", "integer"},
}


@pytest.fixture(scope="module")
def components(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("schema")
    app = create_app(Settings(models_dir=folder, data_dir=folder / "var", admin_key="mk_" + "0" * 40))
    found: dict[str, Any] = app.openapi()["components"]["schemas"]
    return found


def json_types(prop: dict[str, Any], components: dict[str, Any]) -> set[str]:
    """The JSON types a schema property allows ("object" for a reference)."""
    if "$ref" in prop:
        return {"object"}
    if "anyOf" in prop:
        return set().union(*(json_types(p, components) for p in prop["anyOf"]))
    if "const" in prop or "enum" in prop:
        return {"string"}
    kind = prop.get("type")
    return set(kind) if isinstance(kind, list) else {kind} if kind else {"object", "string", "number"}


def allowed(hint: Any) -> set[str]:
    """The JSON types a field's type hint is built from."""
    if hint is Any:
        return {"string", "number", "integer", "boolean", "object", "array", "null"}
    if typing.get_origin(hint) in (Union, types.UnionType):
        return set().union(*(allowed(h) for h in typing.get_args(hint)))
    if hint is type(None):
        return {"null"}
    if typing.get_origin(hint) is list:
        return {"array"}
    if typing.get_origin(hint) is dict or dataclasses.is_dataclass(hint):
        return {"object"}
    return JSON_TYPES[hint]


@pytest.mark.parametrize("cls", list(ANSWERS), ids=lambda cls: cls.__name__)
def test_the_sdk_type_matches_the_schema_of_its_answer(cls: type, components: dict[str, Any]) -> None:
    name = ANSWERS[cls]
    properties: dict[str, Any] = components[name]["properties"]
    hints = typing.get_type_hints(cls)
    read = {f.name for f in dataclasses.fields(cls)} - {"raw"}
    for field in sorted(read):
        assert field in properties, f"{cls.__name__}.{field}: no such property in {name}"
        sent = json_types(properties[field], components) - {"null"}
        assert sent <= allowed(hints[field]), f"{cls.__name__}.{field}: {hints[field]} cannot hold {sent}"
    unread = {p for p in properties if p not in read and p not in UNREAD and f"{name}.{p}" not in UNREAD}
    assert not unread, f"{cls.__name__} does not read {sorted(unread)} of {name}"


def test_every_answer_schema_with_a_data_list_is_covered(components: dict[str, Any]) -> None:
    """A new answer model (a `…List`'s item) has an SDK type, or is named here."""
    covered = set(ANSWERS.values())
    # APIKey reads every key answer; OpenAI's embeddings are read by the `openai` package
    sdk_free = {"ApiKey", "NewApiKey", "DeletedFile", "Embedding"}
    items = {
        component["properties"]["data"]["items"]["$ref"].rsplit("/", 1)[1]
        for component in components.values()
        if "data" in component.get("properties", {}) and "items" in component["properties"]["data"]
    }
    assert items <= covered | sdk_free, items - covered - sdk_free
