"""Request-scoped inputs of the routes, as `Annotated` aliases in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, Request, Response

from service.errors import AuthenticationFailed, GatewayError, RateLimited
from service.metering import Meter
from service.observability.metrics import Metrics
from service.observability.middleware import request_id_of
from service.serving.registry import ModelRegistry
from service.settings import Settings
from service.tenancy.keystore import KeyStore
from service.tenancy.principal import Principal
from service.tenancy.quota import Quota
from service.tenancy.ratelimit import Limiter


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("malformed Authorization header: expected 'Bearer <key>'")
    return token


def authenticate(request: Request) -> Principal:
    """FastAPI dependency: the caller, or 401."""
    store: KeyStore = request.app.state.keys
    principal = store.verify(bearer_token(request))
    if principal is None:
        raise AuthenticationFailed("invalid API key")
    request.state.principal = principal  # for the access log (tenant, key id; never the key)
    return principal


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def _meter(request: Request) -> Meter:
    meter: Meter = request.app.state.meter
    return meter


Caller = Annotated[Principal, Depends(authenticate)]
AppMeter = Annotated[Meter, Depends(_meter)]
Registry = Annotated[ModelRegistry, Depends(_registry)]
AppSettings = Annotated[Settings, Depends(_settings)]
AppMetrics = Annotated[Metrics, Depends(_metrics)]


@dataclass(frozen=True)
class Admission:
    """A request let in by the rate limits and the quota; `charge` counts its inputs when it succeeds."""

    caller: Principal
    quota: Quota
    headers: dict[str, str]  # RateLimit-*: for routes that build their own Response

    async def charge(self, inputs: int) -> None:
        # counted only while a quota is set: usage for billing is metering's job
        if self.caller.tenant_id is not None and self.caller.monthly_quota_inputs is not None:
            await anyio.to_thread.run_sync(self.quota.charge, self.caller.tenant_id, inputs)


async def _admit(request: Request, response: Response, caller: Caller) -> AsyncIterator[Admission]:
    """Rate buckets (429 + Retry-After), then the monthly quota, then an in-flight slot held
    until the request ends. The RateLimit-* headers go on the answer, error or not."""
    limiter: Limiter = request.app.state.limiter
    quota: Quota = request.app.state.quota
    admitted = False
    try:
        headers = await limiter.check_rate(caller)
        request.state.rate_limit_headers = headers
        response.headers.update(headers)
        if caller.monthly_quota_inputs is not None:
            try:
                await anyio.to_thread.run_sync(quota.check, caller)
            except RateLimited:
                limiter.refused.labels("quota").inc()
                raise
        async with limiter.concurrency(caller):
            admitted = True
            yield Admission(caller, quota, headers)
    except GatewayError as exc:
        if not admitted:  # the route meters what it answers itself
            await _meter_refusal(request, caller, exc.status_code)
        raise


async def _meter_refusal(request: Request, caller: Principal, status: int) -> None:
    """A request refused before it ran (429, 503) is answered, so it gets its event (free)."""
    meter: Meter = request.app.state.meter
    if not meter.enabled or caller.tenant_id is None:
        return
    usage = meter.usage(
        request_id=request_id_of(request),
        tenant_id=caller.tenant_id,
        key_id=caller.key_id,
        model=str(request.path_params.get("model", "")),
        inputs=0,
        status=status,
    )
    await meter.record(usage)


Admitted = Annotated[Admission, Depends(_admit)]
