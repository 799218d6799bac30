"""The gateway's one typed container: everything the routes use, built once by `Gateway.start` in
the app's lifespan and read by the routes only through `service/api/deps.py`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass, field
from datetime import timedelta

import anyio
import torch
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service import heap
from service.batches.runner import BatchRunner
from service.batches.store import BatchStore
from service.db import check_connection, create_db_engine, session_factory, upgrade
from service.engine.client import EngineClient, EngineGone
from service.engine.mirror import MirrorRegistry, RemoteInference
from service.errors import Conflict
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
from service.redaction import redact_keys_in_logs
from service.serving.admission import PreprocessGate, preprocess_concurrency
from service.serving.devices import DevicePool, used_bytes
from service.serving.fairqueue import CLASSES
from service.serving.host_memory import keep_freed_host_memory
from service.serving.inference import Inference
from service.serving.inputs import InputLimits
from service.serving.preprocess import PreprocessPool
from service.serving.registrations import ModelSync, Registrations
from service.serving.registry import ModelEntry, ModelRegistry
from service.settings import Settings
from service.tenancy.bootstrap import bootstrap_admin_key
from service.tenancy.keychanges import MODELS_CHANNEL, KeyChangeMetrics, KeyChanges
from service.tenancy.keys import SCOPES
from service.tenancy.keystore import AdminKeyStore, DatabaseKeyStore
from service.tenancy.quota import Quota
from service.tenancy.ratelimit import Buckets, Limiter, LimitMetrics, build_buckets
from service.tenancy.shared_limits import shared_limits
from service.tenancy.tenants import DEFAULT_TENANT, Tenants
from service.training.finished import FinishedModels
from service.training.metrics import TrainingMetrics
from service.training.runner import JobRunner
from service.training.store import FineTuneStore

log = logging.getLogger(__name__)

METRICS_PUSH_S = 2.0  # a worker's metrics reach the model process at least this often


@dataclass
class Gateway:
    """What one running gateway holds. `draining` turns true on SIGTERM: readiness answers 503."""

    settings: Settings
    metrics: Metrics
    engine: Engine
    sessions: sessionmaker[Session]
    tenants: Tenants
    keys: DatabaseKeyStore
    key_changes: KeyChanges | None
    quota: Quota
    limiter: Limiter
    buckets: Buckets
    pool: DevicePool
    registry: ModelRegistry
    preprocess: PreprocessPool | None
    inference: Inference
    meter: Meter
    writer: UsageWriter
    fine_tunes: FineTuneStore
    runner: JobRunner
    batches: BatchStore
    batch_runner: BatchRunner
    registrations: Registrations
    model_sync: ModelSync
    model_changes: KeyChanges | None  # with Redis: registrations announced to every replica
    draining: bool = False
    # a front-end worker's connection to the model process (MAAS_WORKERS > 1); None: models run here
    client: EngineClient | None = None
    _preload: asyncio.Task[None] | None = field(default=None, repr=False)
    _push: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    async def start(cls, settings: Settings, client: EngineClient | None = None) -> Gateway:
        """Open the database (migrated), the key store, the limits, the model registry (preloading
        in the background), the usage writer, the fine-tuning runner and the batch runner.

        With `client`, a front-end worker's gateway (service/engine/): the same routes, keys,
        limits and metering, but its models run in the model process that `client` reaches (which
        migrated the database and runs the jobs; the workers share their rate-limit buckets, unless
        Redis keeps them, and tenants' requests in flight in memory: service/tenancy/shared_limits.py)."""
        redact_keys_in_logs()
        metrics = Metrics(tenant_labels=settings.metrics_tenant_labels)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_db_engine(settings.resolved_database_url)
        check_connection(engine)
        if client is None:
            upgrade(engine)
        sessions = session_factory(engine)
        tenants = Tenants(sessions)
        keys = _key_store(settings, sessions, tenants)
        if client is not None:  # a key change made through another worker drops this one's cache
            client.on_notice["keys_changed"] = lambda reason: keys.forget()
        key_changes = None
        if settings.redis_url:  # a key change made on any replica drops every replica's key cache at once
            key_changes = KeyChanges(
                settings.redis_url.get_secret_value(), metrics=KeyChangeMetrics(metrics.registry)
            )
            await key_changes.start(keys.forget)
        limit_metrics = LimitMetrics(metrics.registry)
        buckets: Buckets = build_buckets(settings, limit_metrics)
        slots = None
        if client is not None:  # one set of buckets (unless Redis keeps them) and of slots for every worker
            shared, slots = shared_limits(
                client.path.parent,
                workers=settings.resolved_workers,
                worker=client.worker,
                buckets=settings.redis_url is None,
            )
            buckets = shared or buckets
        limiter = Limiter(
            buckets,
            limit_metrics,
            default_rps=settings.default_rate_limit_rps,
            burst_factor=settings.rate_limit_burst_factor,
            slots=slots,
        )

        if client is not None:
            # a front-end worker runs no forward pass: its torch steps are small, per image, and
            # more intra-op threads would only spin on the cores the other processes need
            # (DeiT-tiny served 1.19x as fast with the workers on one; docs/serving.md)
            torch.set_num_threads(1)
        elif settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        if client is None and settings.host_memory_reuse:  # before the models' first passes
            keep_freed_host_memory()
        if client is None:
            # the pipelines, once, before models load on several threads: two threads' first
            # imports of transformers' lazy modules can meet in an import cycle, where one gets a
            # module half made ("cannot import name 'pipeline' from 'transformers'")
            import transformers.pipelines  # noqa: F401
        preprocess = None  # a worker decodes on its own threads: the workers are the processes
        if settings.preprocess_processes and client is None:
            preprocess = PreprocessPool(settings.preprocess_processes)
        if preprocess is not None:
            await anyio.to_thread.run_sync(preprocess.start)
        gate = PreprocessGate(preprocess_concurrency(settings), fair=settings.fair_queueing)
        pool = DevicePool.from_spec(settings.devices if client is None else "cpu")
        fine_tunes = FineTuneStore(sessions, settings.data_dir)
        finished = FinishedModels(fine_tunes, settings.data_dir)  # also those other replicas finish
        registry = (ModelRegistry if client is None else functools.partial(MirrorRegistry, client))(
            settings.models_dir,
            pool,
            metrics,
            hub_timeout_s=settings.hub_probe_timeout_s,
            finder=finished,
            fair_queueing=settings.fair_queueing,
            batch_max_wait_s=settings.batch_max_wait_s,
            memory_mb=settings.device_memory_mb,
            tune_threads=not settings.torch_threads,
            cpu_linear=settings.cpu_linear,
        )
        registry.discover()
        finished.register_all(registry)  # fine-tuned models survive restarts
        metrics.sample_queue_depth(lambda: ((e.name, e.owner, e.queue_depth) for e in registry.list()))
        metrics.sample_class_queue_depth(
            lambda: {c.value: sum(e.class_depth(c) for e in registry.list()) for c in CLASSES}
        )
        if client is None:  # a front-end worker holds no model: the model process reports these
            metrics.sample_device_memory(lambda: {str(d): used_bytes(d) for d in pool.devices})
            metrics.sample_residency(registry.residency.resident_models, registry.residency.resident_bytes)

        usage_metrics = UsageMetrics(
            metrics.registry,
            tenant_labels=settings.metrics_tenant_labels,
            model_label=lambda name: metrics.model_label(name, registry.owner_of(name)),
        )
        writer = UsageWriter(
            sessions,
            flush_s=settings.usage_flush_ms / 1000,
            max_group=settings.usage_max_group,
            on_commit=usage_metrics.observe_group,
        )
        meter = _meter(settings, sessions, registry, writer, usage_metrics)
        registrations = Registrations(sessions)
        model_sync = ModelSync(
            registrations,
            registry,
            interval_s=settings.model_sync_s,
            on_price=lambda name, price: meter.prices.sync_manifests([(name, price)]),
        )
        await model_sync.sync()  # registered models survive restarts: listed before the preload
        model_changes = None
        if settings.redis_url:
            model_changes = KeyChanges(
                settings.redis_url.get_secret_value(),
                channel=MODELS_CHANNEL,
                topic="model change",
                bound=f"within {settings.model_sync_s:g} s",
            )
            await model_changes.start(model_sync.poke)
        runner = JobRunner(
            fine_tunes,
            registry,
            pool,
            settings,
            finished,
            meter=meter,  # training is metered through the same meter
            metrics=TrainingMetrics(metrics.registry),
        )
        batches = BatchStore(sessions, settings.data_dir)
        quota = Quota(sessions)
        batch_runner = BatchRunner(
            batches,
            fine_tunes,
            registry,
            settings,
            preprocess=preprocess,
            gate=gate,
            finder=finished,
            meter=meter,
            quota=quota,
        )
        gateway = cls(
            settings=settings,
            metrics=metrics,
            engine=engine,
            sessions=sessions,
            tenants=tenants,
            keys=keys,
            key_changes=key_changes,
            quota=quota,
            limiter=limiter,
            buckets=buckets,
            pool=pool,
            registry=registry,
            preprocess=preprocess,
            inference=(
                Inference
                if client is None
                else functools.partial(RemoteInference, client, inline_pixels=settings.inline_decode_pixels)
            )(registry, metrics, InputLimits.of(settings), preprocess, gate),
            meter=meter,
            writer=writer,
            fine_tunes=fine_tunes,
            runner=runner,
            batches=batches,
            batch_runner=batch_runner,
            registrations=registrations,
            model_sync=model_sync,
            model_changes=model_changes,
            client=client,
        )
        writer.start()
        gateway._preload = asyncio.create_task(gateway._preload_and_settle(), name="maas-preload")
        model_sync.start()
        if settings.fine_tune_runner and client is None:
            runner.start()
        if settings.batch_runner and client is None:
            batch_runner.start()
        if client is not None:
            gateway._push = asyncio.create_task(gateway._push_metrics(), name="maas-metrics-push")
        log.info(
            "maas gateway starting: %d model manifest(s) in %s", len(registry.entries), settings.models_dir
        )
        return gateway

    async def close(self) -> None:
        """Stop in order: training and batch jobs (resumable), then serving (every queued input
        answered), then metering (their usage committed), then the connections."""
        self.draining = True
        if self._push is not None:
            self._push.cancel()
        await self.runner.stop()  # the running job stops after its step; another start resumes it
        await self.batch_runner.stop()  # progress committed; another start goes on from there
        await self.model_sync.close()
        if self.model_changes is not None:
            await self.model_changes.close()
        if self._preload is not None:
            self._preload.cancel()
            await asyncio.gather(self._preload, return_exceptions=True)
        await self.registry.close()  # finishes every queued input first
        await self.writer.close()  # then commits their usage
        if self.preprocess is not None:
            self.preprocess.close()
        await self.buckets.close()
        if self.key_changes is not None:
            await self.key_changes.close()
        self.engine.dispose()

    async def render_metrics(self) -> bytes:
        """`/metrics`: this process's metrics; a worker's, merged with the model process's and every
        other worker's (service/engine/metrics.py), or its own alone while that process restarts."""
        if self.client is not None:
            with contextlib.suppress(EngineGone):
                merged: bytes = await self.client.call("metrics", families=self.metrics.families())
                return merged
        return self.metrics.render()

    async def _preload_and_settle(self) -> None:
        """The preload; then, the process started and its models loaded, its heap settled."""
        await self.registry.preload()
        heap.settle()

    async def _push_metrics(self) -> None:
        """A worker's metrics, sent to the model process every few seconds, so that a scrape that
        reaches another worker counts this one's requests too."""
        assert self.client is not None
        while True:
            await asyncio.sleep(METRICS_PUSH_S)
            self.client.notify("metrics", worker=self.client.worker, families=self.metrics.families())

    def keys_changed(self, reason: str) -> None:
        """A key or tenant changed: drop this process's key cache, every other worker's (through
        the model process) and, with Redis, every replica's, so the change holds on the next
        request anywhere. Called from a request's thread (the admin routes are synchronous)."""
        self.keys.forget()
        if self.client is not None:
            with contextlib.suppress(EngineGone):  # restarting: the others see it within 1 s anyway
                anyio.from_thread.run(functools.partial(self.client.call, "keys_changed", reason=reason))
        if self.key_changes is not None:
            self.key_changes.publish(reason)

    async def models_changed(self) -> None:
        """A registration changed: apply it here now and, with Redis, tell every replica to."""
        await self.model_sync.sync()
        if self.client is not None:  # the model process applies it now too; then show its status
            await self.client.call("sync")
            assert isinstance(self.registry, MirrorRegistry)
            await self.registry.refresh()
        if self.model_changes is not None:
            await asyncio.to_thread(self.model_changes.publish, "models changed")


def _key_store(settings: Settings, sessions: sessionmaker[Session], tenants: Tenants) -> DatabaseKeyStore:
    """The key store, with the bootstrap admin key: MAAS_ADMIN_KEY as is, or the one kept in
    `var/admin.key` (generated on the first start, which says where; printed only if asked)."""
    default = tenants.ensure_tenant(DEFAULT_TENANT)
    configured = settings.admin_key.get_secret_value() if settings.admin_key else None
    admin = bootstrap_admin_key(configured, settings.data_dir)
    if admin.path is not None and not tenants.has_key(admin.key):
        # the kept admin key is a key of the default tenant: listed, revocable like any other
        with contextlib.suppress(Conflict):  # another replica sharing the database got there first
            tenants.create_key(DEFAULT_TENANT, name="bootstrap admin", scopes=SCOPES, key=admin.key)
    # On stdout, outside the logs (keys never go into log lines), and the key itself only if asked:
    # stdout is often captured too.
    if admin.generated and admin.path is not None:
        print(f"maas: generated an admin key, kept in {admin.path.resolve()} (mode 0600)", flush=True)
    if settings.print_admin_key and admin.path is not None:
        print(f"maas: the admin key kept in {admin.path}:\n{admin.key}", flush=True)
    fallback = AdminKeyStore(configured, tenant_id=default.id) if configured else None
    return DatabaseKeyStore(sessions, fallback=fallback)


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
