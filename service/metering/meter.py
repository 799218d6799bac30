"""The meter: what the predict route calls. Prices a request, writes its usage event through the
group-commit writer (with its idempotency outcome), and answers idempotency claims. It prices a
fine-tuning job's training too; the job runner writes that event with the job's final status."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import anyio
from prometheus_client import CollectorRegistry, Counter, Histogram

from service.errors import GatewayError
from service.metering.idempotency import Claim, Idempotency
from service.metering.metered import MeteredRequest
from service.metering.prices import BATCH, TRAINING, PriceBook
from service.metering.writer import GroupStats, Outcome, Usage, UsageWriter
from service.serving.batching import Tally

WRITE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class UsageUnavailable(GatewayError):
    """503: the usage event could not be committed, so the answer is not sent (it would be free)."""

    status_code = 503
    error_type = "unavailable"
    default_retry_after_s = 1


class UsageMetrics:
    """Metering's collectors, on the app's registry. Billed inputs are labelled by tenant only when
    `tenant_labels`; `model_label` names a model on them (a tenant's fine-tuned one as `fine-tuned`)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        tenant_labels: bool = False,
        model_label: Callable[[str], str] = str,
    ) -> None:
        self.tenant_labels = tenant_labels
        self.model_label = model_label
        self.events = Counter(
            "maas_usage_events", "Usage events committed, by status.", ["status"], registry=registry
        )
        self.write_seconds = Histogram(
            "maas_usage_write_seconds",
            "Time of one group-commit transaction of usage events.",
            buckets=WRITE_BUCKETS,
            registry=registry,
        )
        self.group_size = Histogram(
            "maas_usage_group_size",
            "Usage events per group-commit transaction.",
            buckets=GROUP_BUCKETS,
            registry=registry,
        )
        self.inputs = Counter(
            "maas_usage_inputs",
            "Billed inputs (answered 200), by tenant id (MAAS_METRICS_TENANT_LABELS) and model.",
            ["tenant", "model"] if tenant_labels else ["model"],
            registry=registry,
        )
        self.write_failures = Counter(
            "maas_usage_write_failures", "Usage events that could not be committed.", registry=registry
        )
        self.replays = Counter(
            "maas_idempotent_replays",
            "Requests with an Idempotency-Key already seen, by outcome: replayed (the stored answer), "
            "running (409) or mismatch (422).",
            ["outcome"],
            registry=registry,
        )

    def billed(self, usage: Usage) -> None:
        model = self.model_label(usage.model)
        labels = (usage.tenant_id, model) if self.tenant_labels else (model,)
        self.inputs.labels(*labels).inc(usage.inputs)

    def observe_group(self, stats: GroupStats) -> None:
        self.write_seconds.observe(stats.seconds)
        self.group_size.observe(stats.events)


class Meter:
    """Usage events, prices and idempotency for one app. With `enabled` false (benchmarks only)
    nothing is recorded and Idempotency-Key is ignored."""

    def __init__(
        self,
        writer: UsageWriter,
        prices: PriceBook,
        idempotency: Idempotency,
        metrics: UsageMetrics,
        *,
        enabled: bool = True,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.writer = writer
        self.prices = prices
        self.idempotency = idempotency
        self.metrics = metrics
        self.enabled = enabled
        self._now = now

    def usage(
        self,
        *,
        request_id: str,
        tenant_id: str,
        key_id: str,
        model: str,
        inputs: int,
        status: int,
        tally: Tally | None = None,
    ) -> Usage:
        """The event for a request, priced now (a 200 only is charged)."""
        return Usage(
            request_id=request_id,
            tenant_id=tenant_id,
            key_id=key_id,
            model=model,
            inputs=inputs,
            compute_us=round(tally.compute_s * 1_000_000) if tally else 0,
            queue_us=round(tally.queue_s * 1_000_000) if tally else 0,
            status=status,
            price=self.prices.current(model),
            created_at=self._now(),
        )

    def training_usage(
        self,
        *,
        job_id: str,
        tenant_id: str,
        key_id: str,
        base_model: str,
        samples: int,
        device_seconds: float,
        billed: bool,
    ) -> Usage:
        """The one event of a fine-tuning job, keyed by the job id (so it is written once): samples
        trained and device time, at the base model's current training price. Charged when `billed`
        (the job succeeded or its tenant cancelled it); a failed job is recorded at no charge."""
        return Usage(
            request_id=job_id,
            tenant_id=tenant_id,
            key_id=key_id,
            model=base_model,
            inputs=samples,
            compute_us=round(device_seconds * 1_000_000),
            queue_us=0,
            status=200 if billed else 500,
            price=self.prices.current(base_model, TRAINING),
            created_at=self._now(),
            kind=TRAINING,
        )

    def batch_usage(
        self,
        *,
        job_id: str,
        tenant_id: str,
        key_id: str,
        model: str,
        inputs: int,
        compute_us: int,
        billed: bool,
    ) -> Usage:
        """The one event of a batch job, keyed by the job id (so it is written once): the inputs it
        answered and their share of forward time, at the model's current batch price (inference's
        less the manifest's `batch_discount`). A failed job is recorded at no charge."""
        return Usage(
            request_id=job_id,
            tenant_id=tenant_id,
            key_id=key_id,
            model=model,
            inputs=inputs,
            compute_us=compute_us,
            queue_us=0,
            status=200 if billed else 500,
            price=self.prices.current(model, BATCH),
            created_at=self._now(),
            kind=BATCH,
        )

    def request(
        self,
        *,
        request_id: str,
        tenant_id: str | None,
        key_id: str,
        model: str,
        render_error: Callable[[GatewayError], bytes],
    ) -> MeteredRequest:
        """One request's metering, an async context manager (see `service.metering.metered`);
        `render_error` gives an error's answer, kept for Idempotency-Key replays."""
        return MeteredRequest(
            self,
            request_id=request_id,
            tenant_id=tenant_id if self.enabled else None,
            key_id=key_id,
            model=model,
            render_error=render_error,
        )

    async def record(
        self, usage: Usage | None, outcome: Outcome | None = None, *, quota: bool = False
    ) -> None:
        """Commit `usage` (and `outcome`; with `quota`, its inputs on the tenant's monthly quota)
        with the next group; 503 if that fails."""
        if not self.enabled:
            return
        try:
            await self.writer.record(usage, outcome, quota=quota)
        except Exception as exc:
            self.metrics.write_failures.inc()
            raise UsageUnavailable("usage could not be recorded; the request was not billed") from exc
        if usage is not None:
            self.counted(usage)

    def counted(self, usage: Usage) -> None:
        """Count a committed event in the metrics."""
        self.metrics.events.labels(str(usage.status)).inc()
        if usage.status == 200 and usage.kind != TRAINING:
            self.metrics.billed(usage)

    async def claim(self, tenant_id: str, key: str, digest: str, request_id: str) -> Claim:
        return await anyio.to_thread.run_sync(self.idempotency.claim, tenant_id, key, digest, request_id)
