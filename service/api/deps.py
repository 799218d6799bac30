"""The routes' only way to the `Gateway` container, and their request-scoped inputs as
`Annotated` aliases in one place: the caller (authentication), its admission (rate limits,
quota, in-flight cap), the container's parts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from service.batches.store import BatchStore
from service.errors import AuthenticationFailed, InvalidInput, RateLimited
from service.gateway import Gateway
from service.serving.registry import ModelRegistry
from service.settings import Settings
from service.tenancy.keystore import NOT_CACHED
from service.tenancy.principal import Principal
from service.tenancy.quota import Quota
from service.tenancy.tenants import Tenants
from service.training.store import FineTuneStore

# Dependencies are `async def` wherever they do not block: FastAPI runs a plain `def` one on a
# worker thread, a hand-off that costs more CPU than most of them do (three per predict call).


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _gateway(request: Request) -> Gateway:
    return gateway_of(request)


App = Annotated[Gateway, Depends(_gateway)]


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("malformed Authorization header: expected 'Bearer <key>'")
    return token


# Declares the Bearer scheme in the OpenAPI schema (and Swagger UI's "Authorize"); the header itself
# is read by `bearer_token`, whose 401 messages say what is wrong with it.
BEARER = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


async def authenticate(
    request: Request, gateway: App, _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
) -> Principal:
    """The caller, or 401 (403 for a suspended tenant's key); the database is read off the event
    loop, and only when the key's cached answer (at most a second old) is missing or stale."""
    token = bearer_token(request)
    principal = gateway.keys.verify_cached(token)
    if principal is NOT_CACHED:
        principal = await anyio.to_thread.run_sync(gateway.keys.verify, token)
    if principal is None:
        raise AuthenticationFailed("invalid API key")
    request.state.principal = principal  # for the access log (tenant, key id; never the key)
    return principal


async def _admin(caller: Annotated[Principal, Depends(authenticate)]) -> Principal:
    caller.require_scope("admin")
    return caller


async def _fine_tuner(caller: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """The caller, if its key has the `fine_tune` scope (or `admin`), and belongs to a tenant."""
    caller.require_scope("fine_tune")
    if caller.tenant_id is None:
        raise InvalidInput("this key belongs to no tenant; fine-tuning needs one")
    return caller


async def _tenanted(caller: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """The caller, if its key belongs to a tenant (files and jobs are a tenant's)."""
    if caller.tenant_id is None:
        raise InvalidInput("this key belongs to no tenant; files and jobs need one")
    return caller


async def _batch_submitter(caller: Annotated[Principal, Depends(_tenanted)]) -> Principal:
    """The caller, if its key has the `inference` scope (or `admin`), and belongs to a tenant."""
    caller.require_scope("inference")
    return caller


def tenant_of(caller: Principal) -> str:
    """The tenant of a caller that has one (a `FineTuner`, `Tenanted` or `BatchSubmitter`)."""
    assert caller.tenant_id is not None  # checked by `_fine_tuner`
    return caller.tenant_id


def _part(name: str) -> Any:
    """A dependency on one part of the container."""

    async def part(request: Request) -> Any:
        return getattr(gateway_of(request), name)

    return Depends(part)


Caller = Annotated[Principal, Depends(authenticate)]
Admin = Annotated[Principal, Depends(_admin)]
FineTuner = Annotated[Principal, Depends(_fine_tuner)]
Tenanted = Annotated[Principal, Depends(_tenanted)]
BatchSubmitter = Annotated[Principal, Depends(_batch_submitter)]
Registry = Annotated[ModelRegistry, _part("registry")]
AppSettings = Annotated[Settings, _part("settings")]
Directory = Annotated[Tenants, _part("tenants")]
Sessions = Annotated[sessionmaker[Session], _part("sessions")]
Store = Annotated[FineTuneStore, _part("fine_tunes")]
Batches = Annotated[BatchStore, _part("batches")]


@dataclass(frozen=True)
class Admission:
    """A request let in by the rate limits and the quota; `charge` counts its inputs when it succeeds."""

    caller: Principal
    quota: Quota
    headers: dict[str, str]  # RateLimit-*: for routes that build their own Response

    @property
    def counts_quota(self) -> bool:
        """Whether answers count against a monthly quota: only while one is set (usage for billing
        is metering's job)."""
        return self.caller.tenant_id is not None and self.caller.monthly_quota_inputs is not None

    async def charge(self, inputs: int) -> None:
        """Count `inputs` on the quota now, if one is set, in a transaction of its own (a request
        not metered)."""
        if self.caller.tenant_id is not None and self.counts_quota:
            await anyio.to_thread.run_sync(self.quota.charge, self.caller.tenant_id, inputs)


@asynccontextmanager
async def admit(request: Request, gateway: Gateway, caller: Principal) -> AsyncIterator[Admission]:
    """Rate buckets (429 + Retry-After), then the monthly quota, then an in-flight slot held
    until the block ends. The RateLimit-* headers go on the answer, error or not."""
    headers = await gateway.limiter.check_rate(caller)
    request.state.rate_limit_headers = headers
    if not gateway.quota.well_under(caller):  # else a count read within the second says so
        try:
            await anyio.to_thread.run_sync(gateway.quota.check, caller)
        except RateLimited:
            gateway.limiter.refused.labels("quota").inc()
            raise
    async with gateway.limiter.concurrency(caller):
        yield Admission(caller, gateway.quota, headers)
