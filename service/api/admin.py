"""`/v1/admin/…`: tenants and their keys, for keys with the `admin` scope (gateway operators).

Routes are plain functions, which FastAPI runs on a worker thread: database calls never block
the event loop. After a change, this process's key cache is dropped and, with Redis, every other
replica is told to drop its own before the answer is sent, so the change holds on the next
request anywhere; without Redis (or if the message is lost) other replicas see it within a second.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api import schemas as s
from service.api.deps import Admin, App, Directory
from service.bounds import Concurrency, GraceSeconds, Name, Names, QuotaInputs, Rps, UtcTime, Weight
from service.errors import InvalidRequest
from service.redaction import KEY_PREFIX
from service.tenancy.tenants import DEFAULT_SCOPES, describe_key, describe_tenant

router = APIRouter(prefix="/v1/admin", tags=["admin"])
ADMIN = s.AUTHENTICATED


class TenantIn(BaseModel):
    """A new tenant; the ranges are `service.bounds`'s (docs: "Value ranges")."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    rate_limit_rps: Rps | None = None
    max_concurrency: Concurrency | None = None
    monthly_quota_inputs: QuotaInputs | None = None
    allowed_models: Names | None = None
    weight: Weight = 1.0


class TenantChanges(BaseModel):
    """Only the fields sent change; `null` clears a limit."""

    model_config = ConfigDict(extra="forbid")

    rate_limit_rps: Rps | None = None
    max_concurrency: Concurrency | None = None
    monthly_quota_inputs: QuotaInputs | None = None
    allowed_models: Names | None = None
    weight: Weight | None = None  # null: back to 1


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    scopes: Names = Field(default_factory=lambda: list(DEFAULT_SCOPES))
    models: Names | None = None
    expires_at: UtcTime | None = None
    rate_limit_rps: Rps | None = None

    @field_validator("expires_at")
    @classmethod
    def _in_the_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= datetime.now(UTC):
            raise ValueError("must be in the future")
        return value


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: GraceSeconds = 0


def _key_id(key_id: str) -> str:
    # a key in a URL ends up in access logs: refuse it without repeating it
    if key_id.startswith(KEY_PREFIX):
        raise InvalidRequest("pass the key's id (key_…) in the URL, never the key itself")
    return key_id


@router.post("/tenants", status_code=201, **s.documented(s.Tenant, *ADMIN, 409, status=201))
def create_tenant(body: TenantIn, _: Admin, tenants: Directory) -> dict[str, Any]:
    return describe_tenant(tenants.create_tenant(**body.model_dump()))


@router.get("/tenants", **s.documented(s.TenantList, *ADMIN))
def list_tenants(_: Admin, tenants: Directory) -> dict[str, Any]:
    return {"object": "list", "data": [describe_tenant(t) for t in tenants.list_tenants()]}


@router.get("/tenants/{tenant}", **s.documented(s.Tenant, *ADMIN, 404))
def get_tenant(tenant: str, _: Admin, tenants: Directory) -> dict[str, Any]:
    return describe_tenant(tenants.get_tenant(tenant))


@router.patch("/tenants/{tenant}", **s.documented(s.Tenant, *ADMIN, 404))
def update_tenant(
    tenant: str, body: TenantChanges, gateway: App, _: Admin, tenants: Directory
) -> dict[str, Any]:
    found = tenants.update_tenant(tenant, body.model_dump(include=body.model_fields_set))
    gateway.keys_changed("tenant updated")
    return describe_tenant(found)


@router.post("/tenants/{tenant}/suspend", **s.documented(s.Tenant, *ADMIN, 404))
def suspend_tenant(tenant: str, gateway: App, _: Admin, tenants: Directory) -> dict[str, Any]:
    found = tenants.set_status(tenant, "suspended")
    gateway.keys_changed("tenant suspended")
    return describe_tenant(found)


@router.post("/tenants/{tenant}/resume", **s.documented(s.Tenant, *ADMIN, 404))
def resume_tenant(tenant: str, gateway: App, _: Admin, tenants: Directory) -> dict[str, Any]:
    found = tenants.set_status(tenant, "active")
    gateway.keys_changed("tenant resumed")
    return describe_tenant(found)


@router.post("/tenants/{tenant}/keys", status_code=201, **s.documented(s.NewApiKey, *ADMIN, 404, status=201))
def create_key(tenant: str, body: KeyIn, _: Admin, tenants: Directory) -> dict[str, Any]:
    """The new key is in `key`, this once; only its hash is kept."""
    made = tenants.create_key(tenant, **body.model_dump())
    return {**describe_key(made.row, made.tenant), "key": made.key}


@router.get("/tenants/{tenant}/keys", **s.documented(s.ApiKeyList, *ADMIN, 404))
def list_keys(tenant: str, _: Admin, tenants: Directory) -> dict[str, Any]:
    return {"object": "list", "data": [describe_key(k, tenant) for k in tenants.list_keys(tenant)]}


@router.delete("/keys/{key_id}", **s.documented(s.ApiKey, *ADMIN, 404))
def revoke_key(key_id: str, gateway: App, _: Admin, tenants: Directory) -> dict[str, Any]:
    key, tenant = tenants.revoke_key(_key_id(key_id))
    gateway.keys_changed("key revoked")
    return describe_key(key, tenant)


@router.post(
    "/keys/{key_id}/rotate", status_code=201, **s.documented(s.RotatedApiKey, *ADMIN, 404, 409, status=201)
)
def rotate_key(
    key_id: str, gateway: App, _: Admin, tenants: Directory, body: RotateIn | None = None
) -> dict[str, Any]:
    """A new key like the old one; the old one works `grace_seconds` more, then stops."""
    made, old = tenants.rotate_key(_key_id(key_id), grace_seconds=(body or RotateIn()).grace_seconds)
    gateway.keys_changed("key rotated")
    replaced = describe_key(old, made.tenant)
    return {**describe_key(made.row, made.tenant), "key": made.key, "replaces": replaced}
