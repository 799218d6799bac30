"""Prometheus collectors, one registry per app (so that several apps in one process do not clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


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

    def render(self) -> bytes:
        return generate_latest(self.registry)
