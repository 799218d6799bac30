"""One /metrics for every process: counters and histograms add up, gauges are the model process's."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from service.engine.metrics import merged_exposition, retire


def _process(requests: int, depth: float, seconds: list[float]) -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("maas_requests", "", ["model"], registry=registry).labels("m").inc(requests)
    Gauge("maas_queue_depth", "", ["model"], registry=registry).labels("m").set(depth)
    histogram = Histogram("maas_request_seconds", "", ["model"], buckets=(0.1, 1.0), registry=registry)
    for value in seconds:
        histogram.labels("m").observe(value)
    return registry


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_counters_and_histograms_add_up_and_gauges_are_the_model_processs() -> None:
    engine = _process(requests=0, depth=7, seconds=[])
    workers = [_process(3, 0, [0.05, 0.5]), _process(4, 0, [2.0])]
    merged = _samples(merged_exposition(engine.collect(), [list(w.collect()) for w in workers]))
    model = (("model", "m"),)
    assert merged[("maas_requests_total", model)] == 7
    assert merged[("maas_queue_depth", model)] == 7  # not 7 + 0 + 0 by accident: the engine's own
    assert merged[("maas_request_seconds_count", model)] == 3
    assert merged[("maas_request_seconds_bucket", (("le", "0.1"), ("model", "m")))] == 1
    assert merged[("maas_request_seconds_bucket", (("le", "1.0"), ("model", "m")))] == 2
    assert merged[("maas_request_seconds_sum", model)] == 2.55


def test_a_gauge_only_workers_have_is_their_sum() -> None:
    engine = CollectorRegistry()
    workers = []
    for value in (2, 5):
        registry = CollectorRegistry()
        Gauge("maas_in_flight", "", registry=registry).set(value)
        workers.append(list(registry.collect()))
    assert _samples(merged_exposition(engine.collect(), workers))[("maas_in_flight", ())] == 7


def test_a_worker_that_went_away_leaves_its_counts_and_not_its_gauges() -> None:
    engine = _process(requests=0, depth=1, seconds=[])
    gone = _process(5, 0, [0.05, 0.5])
    Gauge("maas_in_flight", "", registry=gone).set(3)
    survivor, replacement = _process(4, 0, [2.0]), _process(1, 0, [0.05])
    model = (("model", "m"),)

    before = _samples(merged_exposition(engine.collect(), [list(gone.collect()), list(survivor.collect())]))
    retired = retire([], gone.collect())
    after = _samples(
        merged_exposition(engine.collect(), [retired, list(survivor.collect()), list(replacement.collect())])
    )

    assert before[("maas_requests_total", model)] == 9
    assert after[("maas_requests_total", model)] == 10  # never down: 5 kept + 4 + the new 1
    assert after[("maas_request_seconds_count", model)] == 4
    assert after[("maas_request_seconds_bucket", (("le", "0.1"), ("model", "m")))] == 2
    assert ("maas_in_flight", ()) not in after  # the dead worker's in-flight gauge is gone
    assert (
        _samples(merged_exposition(engine.collect(), [retire(retired, _process(2, 0, []).collect())]))[
            ("maas_requests_total", model)
        ]
        == 7
    )
