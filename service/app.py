"""`create_app(settings)`: the FastAPI gateway, and its lifespan (pool, registry, job runner)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session, sessionmaker

from service.api import admin, files, fine_tunes, health, inference, models, usage
from service.db import check_connection, create_db_engine, session_factory, upgrade
from service.errors import Conflict, GatewayError, error_response, install_error_handlers
from service.metering import (
    INFERENCE,
    Idempotency,
    Meter,
    PriceBook,
    UnitPrice,
    UsageMetrics,
    UsageWriter,
    manifest_prices,
)
from service.observability.metrics import Metrics
from service.observability.middleware import RequestMiddleware
from service.observability.tracing import instrument
from service.redaction import redact_keys_in_logs
from service.serving.devices import DevicePool, used_bytes
from service.serving.inputs import InputLimits
from service.serving.preprocess import PreprocessPool
from service.serving.registry import ModelEntry, ModelRegistry
from service.settings import Settings
from service.tenancy.bootstrap import bootstrap_admin_key
from service.tenancy.keychanges import KeyChangeMetrics, KeyChanges
from service.tenancy.keys import SCOPES
from service.tenancy.keystore import AdminKeyStore, DatabaseKeyStore
from service.tenancy.quota import Quota
from service.tenancy.ratelimit import Limiter, LimitMetrics, build_buckets
from service.tenancy.tenants import DEFAULT_TENANT, Tenants
from service.training.metrics import TrainingMetrics
from service.training.runner import JobRunner
from service.training.store import FineTuneStore

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """The gateway for `settings`. Nothing heavy happens until the app starts (its lifespan)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redact_keys_in_logs()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_db_engine(settings.resolved_database_url)
        check_connection(engine)
        upgrade(engine)
        app.state.engine = engine
        sessions = session_factory(engine)
        tenants = Tenants(sessions)
        app.state.tenants = tenants
        default = tenants.ensure_tenant(DEFAULT_TENANT)

        configured = settings.admin_key.get_secret_value() if settings.admin_key else None
        admin = bootstrap_admin_key(configured, settings.data_dir)
        if admin.path is not None and not tenants.has_key(admin.key):
            # the kept admin key is a key of the default tenant: listed, revocable like any other
            with contextlib.suppress(Conflict):  # another replica sharing the database got there first
                tenants.create_key(DEFAULT_TENANT, name="bootstrap admin", scopes=SCOPES, key=admin.key)
        if admin.generated:
            # Shown once, on purpose outside the logs: keys never go into log lines.
            print(
                f"maas: generated an admin key (also saved to {admin.path}):\n{admin.key}",
                flush=True,
            )
        fallback = AdminKeyStore(configured, tenant_id=default.id) if configured else None
        app.state.keys = DatabaseKeyStore(sessions, fallback=fallback)
        # with Redis, a key change made on any replica drops every replica's key cache at once
        key_changes = (
            KeyChanges(
                settings.redis_url.get_secret_value(), metrics=KeyChangeMetrics(app.state.metrics.registry)
            )
            if settings.redis_url
            else None
        )
        if key_changes is not None:
            await key_changes.start(app.state.keys.forget)
        app.state.key_changes = key_changes
        app.state.quota = Quota(sessions)
        buckets = build_buckets(settings, limit_metrics)
        app.state.limiter = Limiter(
            buckets,
            limit_metrics,
            default_rps=settings.default_rate_limit_rps,
            burst_factor=settings.rate_limit_burst_factor,
        )

        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        preprocess = PreprocessPool(settings.preprocess_processes) if settings.preprocess_processes else None
        if preprocess is not None:
            await anyio.to_thread.run_sync(preprocess.start)
        app.state.preprocess = preprocess
        pool = DevicePool.from_spec(settings.devices)
        registry = ModelRegistry(
            settings.models_dir, pool, app.state.metrics, hub_timeout_s=settings.hub_probe_timeout_s
        )
        registry.discover()
        app.state.fine_tunes = FineTuneStore(sessions, settings.data_dir)
        runner = JobRunner(app.state.fine_tunes, registry, pool, settings, metrics=training_metrics)
        runner.register_finished_models()  # fine-tuned models survive restarts
        registry.discover_fine_tuned = runner.discover  # and those other replicas finish are found on demand
        app.state.runner = runner if settings.fine_tune_runner else None
        app.state.metrics.sample_queue_depth(lambda: {e.name: e.queue_depth for e in registry.list()})
        app.state.metrics.sample_device_memory(lambda: {str(d): used_bytes(d) for d in pool.devices})
        app.state.registry = registry
        app.state.sessions = sessions
        writer = UsageWriter(
            sessions,
            flush_s=settings.usage_flush_ms / 1000,
            max_group=settings.usage_max_group,
            on_commit=usage_metrics.observe_group,
        )
        app.state.meter = _meter(settings, sessions, registry, writer, usage_metrics)
        runner.meter = app.state.meter  # training is metered through the same meter
        writer.start()
        app.state.draining = False
        preload = asyncio.create_task(registry.preload(), name="maas-preload")
        if settings.fine_tune_runner:
            runner.start()
        log.info(
            "maas gateway starting: %d model manifest(s) in %s",
            len(registry.entries),
            settings.models_dir,
        )
        try:
            yield
        finally:
            app.state.draining = True
            await runner.stop()  # the running job stops after its step; another start resumes it
            preload.cancel()
            await asyncio.gather(preload, return_exceptions=True)
            await registry.close()  # finishes every queued input first
            await writer.close()  # then commits their usage
            if preprocess is not None:
                preprocess.close()
            await buckets.close()
            if key_changes is not None:
                await key_changes.close()
            engine.dispose()

    app = FastAPI(
        title="maas-gateway",
        version="0.1.0",
        description="Model-as-a-Service inference gateway for transformers pipelines.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.input_limits = InputLimits.of(settings)
    app.state.metrics = Metrics()
    limit_metrics = LimitMetrics(app.state.metrics.registry)
    usage_metrics = UsageMetrics(app.state.metrics.registry)
    training_metrics = TrainingMetrics(app.state.metrics.registry)
    install_error_handlers(app)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            request, GatewayError("internal error; the request id identifies it in the logs")
        )

    app.add_middleware(RequestMiddleware)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(inference.router)
    app.include_router(admin.router)
    app.include_router(usage.router)
    app.include_router(files.router)
    app.include_router(fine_tunes.router)
    instrument(app)  # OpenTelemetry traces, only where the package is installed
    return app


def _meter(
    settings: Settings,
    sessions: sessionmaker[Session],
    registry: ModelRegistry,
    writer: UsageWriter,
    metrics: UsageMetrics,
) -> Meter:
    """The meter, with the manifests' prices made current in the price book."""

    def unit_price(entry: ModelEntry | None, kind: str = INFERENCE) -> UnitPrice | None:
        if entry is None or entry.manifest is None:
            return None
        return manifest_prices(entry.manifest.price)[kind]

    prices = PriceBook(sessions, unlisted=lambda model, kind: unit_price(registry.entries.get(model), kind))
    changed = prices.sync_manifests(
        (entry.name, entry.manifest.price) for entry in registry.list() if entry.manifest is not None
    )
    if changed:
        log.info("price book: new prices for %s", ", ".join(changed))
    idempotency = Idempotency(
        sessions,
        ttl=timedelta(hours=settings.idempotency_ttl_h),
        # an in-progress key older than the longest deadline belongs to a process that died
        stale_after=timedelta(milliseconds=settings.max_request_timeout_ms) + timedelta(minutes=1),
    )
    return Meter(writer, prices, idempotency, metrics, enabled=settings.metering)
