"""Prometheus collectors, one registry per app (so that several apps in one process do not clash)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from service.serving.batching import BatchStats

LOAD_BUCKETS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
FINE_TUNED = "fine-tuned"  # the model label of every tenant's fine-tuned model unless tenant labels are on


class _Sampled(Collector):
    """Gauges read when Prometheus scrapes (queue depth, device memory), not kept up to date."""

    def __init__(
        self, name: str, doc: str, label: str, sample: Callable[[], Mapping[str, float | None]]
    ) -> None:
        self.name, self.doc, self.label, self.sample = name, doc, label, sample

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.doc, labels=[self.label])
        for key, value in self.sample().items():
            if value is not None:
                family.add_metric([key], value)
        yield family


class Metrics:
    """The gateway's metrics; names are prefixed `maas_`. `/metrics` needs no key, so unless
    `tenant_labels` (MAAS_METRICS_TENANT_LABELS) a tenant's fine-tuned model is counted under the
    model label `fine-tuned`, never under its name."""

    def __init__(self, *, tenant_labels: bool = False) -> None:
        self.tenant_labels = tenant_labels
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "maas_requests",
            "Predict requests answered, by model and HTTP status.",
            ["model", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "maas_request_duration_seconds",
            "Predict request latency, by model and HTTP status.",
            ["model", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inputs = Counter(
            "maas_inputs",
            "Inputs (images or texts) predicted, by model.",
            ["model"],
            registry=self.registry,
        )
        self.preprocessed = Counter(
            "maas_preprocessed_inputs",
            "Inputs decoded and preprocessed, by where: `process` (MAAS_PREPROCESS_PROCESSES) or `thread`.",
            ["where"],
            registry=self.registry,
        )
        self.queue_wait_seconds = Histogram(
            "maas_queue_wait_seconds",
            "Time an input waited in its model's queue before its batch ran.",
            ["model"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.class_queue_wait_seconds = Histogram(
            "maas_class_queue_wait_seconds",
            "Time an input waited in its model's queue before its batch ran, by service class.",
            ["class"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.class_inputs = Counter(
            "maas_class_inputs",
            "Inputs predicted, by service class (interactive, batch).",
            ["class"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "maas_batch_size",
            "Inputs per forward pass.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.forward_seconds = Histogram(
            "maas_forward_seconds",
            "Time of one batched forward pass (postprocessing included).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.dropped = Counter(
            "maas_dropped_inputs",
            "Inputs dropped before reaching the device, by reason.",
            ["model", "reason"],
            registry=self.registry,
        )
        self.model_load_seconds = Gauge(
            "maas_model_load_seconds",
            "Seconds the last load of a model took (all replicas, warm-up included).",
            ["model"],
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "maas_model_ready",
            "1 when a model is loaded and serving, else 0.",
            ["model"],
            registry=self.registry,
        )
        self.model_loads = Counter(
            "maas_model_loads",
            "Loads of a model that made it ready (at start, on first use, after an eviction).",
            ["model"],
            registry=self.registry,
        )
        self.model_evictions = Counter(
            "maas_model_evictions",
            "Times a model was unloaded to make room for another (MAAS_DEVICE_MEMORY_MB).",
            ["model"],
            registry=self.registry,
        )
        self.model_load_duration = Histogram(
            "maas_model_load_duration_seconds",
            "Time a load of a model took (all replicas, warm-up included).",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=self.registry,
        )

    def model_label(self, name: str, owner: str | None) -> str:
        """The `model` label of the model `name` owned by `owner` (None: a public model)."""
        return FINE_TUNED if self._hidden(owner) else name

    def loaded(self, name: str, owner: str | None, seconds: float) -> None:
        """A model became ready: its load time and readiness, or one more ready `fine-tuned` model."""
        label = self.model_label(name, owner)
        self.model_loads.labels(label).inc()
        self.model_load_duration.labels(label).observe(seconds)
        if self._hidden(owner):  # one model's load time says nothing of the others'; ready ones are counted
            self.model_ready.labels(FINE_TUNED).inc()
            return
        self.model_load_seconds.labels(name).set(seconds)
        self.model_ready.labels(name).set(1)

    def evicted(self, name: str, owner: str | None) -> None:
        """A model was unloaded to make room for another."""
        self.model_evictions.labels(self.model_label(name, owner)).inc()
        if self._hidden(owner):  # one ready `fine-tuned` model fewer
            self.model_ready.labels(FINE_TUNED).dec()

    def registered(self, name: str, owner: str | None) -> None:
        """A model is known, not loaded yet."""
        if self._hidden(owner):
            self.model_ready.labels(FINE_TUNED).inc(0)  # the series exists from the first fine-tuned model
        else:
            self.model_ready.labels(name).set(0)

    def _hidden(self, owner: str | None) -> bool:
        return owner is not None and not self.tenant_labels

    def batch_observer(self, model: str) -> Callable[[BatchStats], None]:
        """A callback for one model's batchers."""
        batch_size = self.batch_size.labels(model)
        forward = self.forward_seconds.labels(model)
        wait = self.queue_wait_seconds.labels(model)

        def observe(stats: BatchStats) -> None:
            if stats.size:
                batch_size.observe(stats.size)
                forward.observe(stats.forward_s)
                for seconds in stats.queue_wait_s:
                    wait.observe(seconds)
                for service_class, seconds in zip(stats.classes, stats.queue_wait_s, strict=False):
                    self.class_queue_wait_seconds.labels(service_class.value).observe(seconds)
            if stats.dropped_expired:
                self.dropped.labels(model, "deadline").inc(stats.dropped_expired)
            if stats.dropped_cancelled:
                self.dropped.labels(model, "cancelled").inc(stats.dropped_cancelled)

        return observe

    def sample_queue_depth(self, sample: Callable[[], Iterable[tuple[str, str | None, int]]]) -> None:
        """`sample` yields (model, owner, inputs queued); fine-tuned models are summed unless labelled."""

        def depths() -> dict[str, float | None]:
            totals: dict[str, float | None] = {}
            for name, owner, depth in sample():
                label = self.model_label(name, owner)
                totals[label] = (totals.get(label) or 0) + depth
            return totals

        self.registry.register(
            _Sampled("maas_queue_depth", "Inputs waiting in a model's queues.", "model", depths)
        )

    def sample_class_queue_depth(self, sample: Callable[[], Mapping[str, float | None]]) -> None:
        self.registry.register(
            _Sampled(
                "maas_class_queue_depth",
                "Inputs waiting in every model's queues, by service class.",
                "class",
                sample,
            )
        )

    def sample_device_memory(self, sample: Callable[[], Mapping[str, float | None]]) -> None:
        self.registry.register(
            _Sampled(
                "maas_device_memory_bytes",
                "Memory in use per device (CUDA: allocated by this process; cpu: resident set).",
                "device",
                sample,
            )
        )

    def sample_residency(
        self, models: Callable[[], Mapping[str, float | None]], used: Callable[[], Mapping[str, float | None]]
    ) -> None:
        """Resident models and the bytes they hold, per device (what the budget counts)."""
        self.registry.register(
            _Sampled("maas_resident_models", "Model replicas resident on a device.", "device", models)
        )
        self.registry.register(
            _Sampled(
                "maas_resident_bytes",
                "Memory the resident models hold on a device, as counted against MAAS_DEVICE_MEMORY_MB.",
                "device",
                used,
            )
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def families(self) -> list[Metric]:
        """This process's metrics as collected now (for merging with other processes')."""
        return list(self.registry.collect())
