"""`GET /v1/models` and `GET /v1/models/{model}`: the models a key may use."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api import schemas as s
from service.api.deps import Caller, Registry

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", **s.documented(s.ModelList, *s.AUTHENTICATED))
async def list_models(caller: Caller, registry: Registry) -> dict[str, Any]:
    return {"object": "list", "data": [e.describe() for e in await registry.list_for(caller)]}


@router.get("/{model}", **s.documented(s.ModelInfo, *s.AUTHENTICATED, 404))
async def get_model(model: str, caller: Caller, registry: Registry) -> dict[str, Any]:
    return (await registry.state_for(caller, model)).describe()
