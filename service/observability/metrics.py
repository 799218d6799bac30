"""Prometheus collectors, one registry per app (so that several apps in one process do not clash)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.serving.batching import BatchStats

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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
    """The gateway's metrics; names are prefixed `maas_`."""

    def __init__(self) -> None:
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

    def sample_queue_depth(self, sample: Callable[[], Mapping[str, float | None]]) -> None:
        self.registry.register(
            _Sampled("maas_queue_depth", "Inputs waiting in a model's queues.", "model", sample)
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
