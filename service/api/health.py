"""Liveness, readiness and metrics: no key needed."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.api import schemas as s
from service.api.deps import App

router = APIRouter(tags=["health"])


@router.get("/healthz", **s.documented(s.Health))
async def healthz() -> dict[str, str]:
    """200 while the process lives."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=None,
    responses={
        200: {"model": s.Readiness, "description": "Ready."},
        503: {"model": s.Readiness, "description": "Still loading, or draining; see Retry-After."},
    },
)
async def readyz(gateway: App) -> JSONResponse:
    """200 once every preload model is ready or has failed as unavailable; 503 before and while draining.
    Lists the public models only: tenants' fine-tuned models are named to their owner's key alone."""
    draining = gateway.draining
    models = {e.name: e.status.value for e in gateway.registry.public()}
    if draining or not gateway.registry.preload_done.is_set():
        status = "draining" if draining else "loading"
        return JSONResponse(
            {"status": status, "models": models}, status_code=503, headers={"Retry-After": "1"}
        )
    return JSONResponse({"status": "ready", "models": models})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(gateway: App) -> Response:
    """Prometheus text format; tenant ids and fine-tuned model names only with MAAS_METRICS_TENANT_LABELS.
    With several workers, every process's metrics in one (any worker answers for all)."""
    return Response(await gateway.render_metrics(), media_type=CONTENT_TYPE_LATEST)
