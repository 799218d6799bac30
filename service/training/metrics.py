"""Fine-tuning's Prometheus collectors, on the app's registry: jobs, steps, samples, and the time
training gave up to inference on its device."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STEP_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class TrainingMetrics:
    """What the job runner and its trainer report (a `trainer.StepObserver`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Counter(
            "maas_fine_tune_jobs",
            "Fine-tuning jobs ended by this replica, by status (succeeded, failed, cancelled).",
            ["status"],
            registry=registry,
        )
        self.running = Gauge(
            "maas_fine_tune_jobs_running", "Fine-tuning jobs this replica is training now.", registry=registry
        )
        self.steps = Counter(
            "maas_training_steps", "Training steps (optimizer updates) done.", registry=registry
        )
        self.samples = Counter(
            "maas_training_samples", "Samples trained (every epoch counts).", registry=registry
        )
        self.yield_seconds = Counter(
            "maas_training_yield_seconds",
            "Time training waited between steps while inference had work on its device.",
            registry=registry,
        )
        self.step_seconds = Histogram(
            "maas_training_step_seconds",
            "Time of one training step (forward, backward, optimizer update).",
            buckets=STEP_BUCKETS,
            registry=registry,
        )

    def step(self, seconds: float, samples: int) -> None:
        self.steps.inc()
        self.samples.inc(samples)
        self.step_seconds.observe(seconds)

    def yielded(self, seconds: float) -> None:
        self.yield_seconds.inc(seconds)
