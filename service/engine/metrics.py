"""One `/metrics` for all of a gateway's processes: the model process's own metrics (queues,
batches, devices, jobs) merged with every front-end worker's (requests, usage, limits).

Counters, histograms and summaries add up across processes (a series' `_created` time is the
first process's). A gauge is the model process's
where it has one (queue depths, model status: the model process knows them), else the sum of
the workers' values. A worker that goes away (it crashed, or was replaced) leaves its counts
behind (`retire`), so that the sums never go down when its replacement starts from zero; only
what it counted since it last reported (at most a couple of seconds) is lost with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

_SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def _key(sample: Sample) -> _SampleKey:
    return sample.name, tuple(sorted(sample.labels.items()))


def merge(own: Iterable[Metric], workers: Iterable[Iterable[Metric]]) -> list[Metric]:
    """`own` (the model process's families) with every worker's added in."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[_SampleKey, Sample]] = {}
    owned: set[_SampleKey] = set()

    def add(family: Metric, from_engine: bool) -> None:
        if family.name not in families:
            families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            values[family.name] = {}
        samples = values[family.name]
        for sample in family.samples:
            key = _key(sample)
            if family.type == "gauge" and from_engine:
                owned.add(key)
            if key not in samples:
                samples[key] = sample
            elif not ((family.type == "gauge" and key in owned) or sample.name.endswith("_created")):
                samples[key] = sample._replace(value=samples[key].value + sample.value)

    for family in own:
        add(family, True)
    for snapshot in workers:
        for family in snapshot:
            add(family, False)
    for name, family in families.items():
        family.samples = list(values[name].values())
    return list(families.values())


CUMULATIVE = frozenset({"counter", "histogram", "summary"})


def retire(retired: Iterable[Metric], gone: Iterable[Metric]) -> list[Metric]:
    """`retired` (what workers that went away had counted) with `gone`'s counts added in; its
    gauges are dropped (a process that is not there has no current value)."""
    return merge([], [retired, [family for family in gone if family.type in CUMULATIVE]])


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merged_exposition(own: Iterable[Metric], workers: Iterable[Iterable[Metric]]) -> bytes:
    """The Prometheus text exposition of `merge(own, workers)`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(merge(own, workers)))
    return generate_latest(registry)
