"""`/v1/admin/models`: models registered at run time, for keys with the `admin` scope.

A change is written to the database (the truth), applied on this replica before the answer, and
announced to the others (Redis pub/sub; without it they see it within `MAAS_MODEL_SYNC_S`).
Loading runs in the background: the answer says `loading`; `GET /v1/models/{model}` says when it
is `ready`, or `unavailable` with the reason.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from service.api import schemas as s
from service.api.deps import Admin, App
from service.errors import Conflict
from service.gateway import Gateway
from service.serving.manifests import Batching, ModelManifest, Price
from service.serving.registry import ModelEntry

router = APIRouter(prefix="/v1/admin/models", tags=["admin"])
ADMIN = s.AUTHENTICATED


class ModelChanges(BaseModel):
    """Only the fields sent change; replicas and batching reload the model, price and pinning
    apply at once."""

    model_config = ConfigDict(extra="forbid")

    replicas: int | None = Field(None, ge=1, le=64)
    batching: Batching | None = None
    price: Price | None = None
    preload: bool | None = None
    pinned: bool | None = None
    description: str | None = Field(None, max_length=1000)


def _registered(gateway: Gateway, model: str) -> ModelEntry:
    """The registered model `model` as this replica lists it: 404 if unknown, 409 for a model
    from a manifest file or a fine-tune (those are not managed here)."""
    entry = gateway.registry.get(model)
    if entry.version is None:
        raise Conflict(f"model {model!r} comes from a manifest file or a fine-tune; it is not registered")
    return entry


@router.post("", status_code=201, **s.documented(s.ModelInfo, *ADMIN, 409, status=201))
async def register_model(manifest: ModelManifest, gateway: App, _: Admin) -> dict[str, Any]:
    """Register a model from a manifest (the fields of a manifest file, as JSON, validated by the
    same model) and start loading it."""
    taken = gateway.registry.entries.get(manifest.name)
    if taken is not None and taken.version is None:
        raise Conflict(f"model {manifest.name!r} exists (a manifest file or a fine-tune); pick another name")
    await asyncio.to_thread(gateway.registrations.create, manifest)
    await gateway.models_changed()
    return gateway.registry.get(manifest.name).describe()


@router.patch("/{model}", **s.documented(s.ModelInfo, *ADMIN, 404, 409))
async def update_model(model: str, body: ModelChanges, gateway: App, _: Admin) -> dict[str, Any]:
    _registered(gateway, model)
    changes = body.model_dump(mode="json", include=body.model_fields_set, exclude_none=True)
    await asyncio.to_thread(gateway.registrations.update, model, changes)
    await gateway.models_changed()
    return gateway.registry.get(model).describe()


@router.delete("/{model}", **s.documented(s.ModelInfo, *ADMIN, 404, 409))
async def delete_model(model: str, gateway: App, _: Admin) -> dict[str, Any]:
    """Drain the model (queued inputs are answered), then remove it: its predictions answer 404."""
    gone = _registered(gateway, model).describe()
    await asyncio.to_thread(gateway.registrations.delete, model)
    await gateway.models_changed()
    return {**gone, "status": "deleted", "devices": []}


@router.post("/{model}/load", **s.documented(s.ModelInfo, *ADMIN, 404, 409))
async def load_model(model: str, gateway: App, _: Admin) -> dict[str, Any]:
    """Load the model (again): after an unload, or to retry one that was unavailable."""
    return await _set_loaded(gateway, model, True)


@router.post("/{model}/unload", **s.documented(s.ModelInfo, *ADMIN, 404, 409))
async def unload_model(model: str, gateway: App, _: Admin) -> dict[str, Any]:
    """Drain the model and free its devices: `unloaded` until its next use (or a load) loads it."""
    return await _set_loaded(gateway, model, False)


async def _set_loaded(gateway: Gateway, model: str, loaded: bool) -> dict[str, Any]:
    _registered(gateway, model)
    await asyncio.to_thread(gateway.registrations.set_loaded, model, loaded)
    await gateway.models_changed()
    return gateway.registry.get(model).describe()
