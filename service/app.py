"""`create_app(settings)`: the FastAPI gateway. Its lifespan builds the one `Gateway` container
(service/gateway.py) that the routes read through `service/api/deps.py`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from service.api import (
    admin,
    admin_models,
    batches,
    files,
    fine_tunes,
    health,
    inference,
    me,
    models,
    openai,
    usage,
    v2,
)
from service.api.docs import install_docs
from service.api.guard import plain_text_parameters
from service.console import install_console
from service.engine.client import EngineAddress, EngineClient
from service.errors import GatewayError, error_response, install_error_handlers
from service.gateway import Gateway
from service.observability.middleware import RequestMiddleware
from service.observability.tracing import instrument
from service.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, engine: EngineAddress | None = None) -> FastAPI:
    """The gateway for `settings`. Nothing heavy happens until the app starts (its lifespan).
    With `engine`, a front-end worker's: its models run in the model process at that address."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = None
        if engine is not None:
            client = EngineClient(engine.path, worker=engine.worker, shared_bytes=engine.shared_bytes)
            await client.start(timeout_s=engine.start_timeout_s)
        try:
            gateway = await Gateway.start(settings, client)
            app.state.gateway = gateway
            try:
                yield
            finally:
                await gateway.close()
        finally:
            if client is not None:
                await client.close()

    app = FastAPI(
        title="maas-gateway",
        version="0.1.0",
        description="Model-as-a-Service inference gateway for transformers pipelines.",
        lifespan=lifespan,
        dependencies=[Depends(plain_text_parameters)],  # before every route, before authentication
        docs_url=None,  # install_docs serves /docs and /redoc from local files, not a CDN
        redoc_url=None,
    )
    install_error_handlers(app)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            request, GatewayError("internal error; the request id identifies it in the logs")
        )

    app.add_middleware(RequestMiddleware)
    for module in (
        health,
        me,
        models,
        inference,
        openai,
        v2,
        admin,
        admin_models,
        usage,
        files,
        fine_tunes,
        batches,
    ):
        app.include_router(module.router)
    install_docs(app)
    install_console(app)
    instrument(app)  # OpenTelemetry traces, only where the package is installed
    return app


def begin_draining(app: FastAPI) -> None:
    """SIGTERM: readiness answers 503 from now on, while queued requests finish."""
    gateway: Gateway | None = getattr(app.state, "gateway", None)
    if gateway is not None:
        gateway.draining = True
