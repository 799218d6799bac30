"""`GET /v1/me`: what the caller's key is (its id, tenant, scopes, model list), so a client such
as the console can show what this key may do. Read-only; any valid key may ask."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api import schemas as s
from service.api.deps import Caller

router = APIRouter(prefix="/v1", tags=["keys"])


@router.get("/me", **s.documented(s.KeyIdentity, *s.AUTHENTICATED))
def who_am_i(caller: Caller) -> dict[str, Any]:
    return {
        "object": "key_identity",
        "key_id": caller.key_id,
        "tenant": caller.tenant,
        "scopes": sorted(caller.scopes),
        "models": sorted(caller.models) if caller.models is not None else None,
        "admin": caller.is_admin,
    }
