"""Residency's eviction plan over two devices (torch device names only: nothing is loaded): the
least recently used idle models go first, and only those on the device the model is placed on."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from service.observability.metrics import Metrics
from service.serving.devices import DevicePool
from service.serving.entries import ModelEntry, Replica
from service.serving.manifests import ModelManifest
from service.serving.residency import Residency
from service.serving.status import ModelStatus

CUDA0, CUDA1 = torch.device("cuda", 0), torch.device("cuda", 1)


def resident(name: str, device: torch.device, size: int, last_used: float, **manifest: Any) -> ModelEntry:
    fields = {"name": name, "task": "image-classification", "source": "unused", **manifest}
    entry = ModelEntry(name, Path(f"{name}.yaml"), ModelManifest(**fields), status=ModelStatus.READY)
    entry.replicas = [Replica(adapter=None, device=device, executor=ThreadPoolExecutor(1))]  # type: ignore[arg-type]
    entry.memory_bytes, entry.last_used = size, last_used
    return entry


def residency(*entries: ModelEntry) -> Residency:
    pool = DevicePool([CUDA0, CUDA1], free_memory=lambda device: None)
    models = SimpleNamespace(entries={e.name: e for e in entries})
    return Residency(models, pool, Metrics(), {CUDA0: 100, CUDA1: 100})  # type: ignore[arg-type]


def test_the_least_recently_used_on_the_chosen_device_is_evicted() -> None:
    a, b, c = resident("a", CUDA0, 60, 1), resident("b", CUDA1, 60, 2), resident("c", CUDA0, 30, 3)
    plan = residency(a, b, c)._plan(1, 40)
    assert plan is not None and plan.devices == [CUDA1] and plan.victims == []  # fits beside b
    plan = residency(a, b, c)._plan(1, 70)
    assert plan is not None and plan.devices == [CUDA0] and plan.victims == [a]
    # a does not free enough on cuda:0; b, next, frees cuda:1, where it goes: a is spared
    plan = residency(a, b, c)._plan(1, 80)
    assert plan is not None and plan.devices == [CUDA1] and plan.victims == [b]


def test_pinned_and_busy_models_are_not_victims() -> None:
    a, b = resident("a", CUDA0, 60, 1, pinned=True), resident("b", CUDA0, 30, 2)
    c = resident("c", CUDA1, 90, 3)
    c.users = 1  # a request holds it
    assert residency(a, b, c)._plan(1, 80) is None
    plan = residency(a, b, c)._plan(1, 35)
    assert plan is not None and plan.devices == [CUDA0] and plan.victims == [b]
