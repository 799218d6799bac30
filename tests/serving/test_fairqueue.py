"""Fair queueing between tenants and service classes, driven deterministically: items queued
up front on an injected clock, batches taken by hand or by a batcher whose model records them.
No test waits on wall-clock timing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from service.serving.batching import Batcher, BatchStats
from service.serving.fairqueue import FairQueue, ServiceClass
from tests.serving.test_batching import FakeClock

INTERACTIVE, BATCH = ServiceClass.INTERACTIVE, ServiceClass.BATCH


@dataclass
class Item:
    tenant: str
    weight: float = 1.0
    service_class: ServiceClass = INTERACTIVE
    enqueued_at: float = 0.0


def queue_of(*groups: tuple[str, int, float], fair: bool = True) -> FairQueue[Item]:
    """A queue holding, in arrival order, `count` items of each (tenant, count, weight)."""
    queue: FairQueue[Item] = FairQueue(fair=fair)
    for tenant, count, weight in groups:
        for _ in range(count):
            queue.append(Item(tenant, weight))
    return queue


def shares(items: Sequence[Item]) -> dict[str, int]:
    return dict(Counter(item.tenant for item in items))


def test_a_contended_batch_is_shared_by_weight_not_arrival_order() -> None:
    queue = queue_of(("heavy", 40, 3.0), ("light", 40, 1.0))  # heavy's flood came first
    for _ in range(4):
        assert shares(queue.take(8)) == {"heavy": 6, "light": 2}


def test_equal_weights_alternate_so_a_late_tenant_is_not_behind_the_flood() -> None:
    queue = queue_of(("flood", 30, 1.0))
    queue.take(4)  # the flood has the device to itself for a while
    queue.append(Item("light"))
    assert "light" in shares(queue.take(4))


def test_a_tenant_keeps_its_own_order() -> None:
    queue: FairQueue[Item] = FairQueue()
    items = [Item("a", 2.0, enqueued_at=t) for t in range(5)] + [Item("b", enqueued_at=t) for t in range(5)]
    for item in items:
        queue.append(item)
    taken = queue.take(10)
    assert [i.enqueued_at for i in taken if i.tenant == "a"] == [0, 1, 2, 3, 4]
    assert [i.enqueued_at for i in taken if i.tenant == "b"] == [0, 1, 2, 3, 4]


def test_an_idle_tenant_banks_no_credit() -> None:
    queue = queue_of(("busy", 20, 1.0))
    queue.take(16)  # "idle" sent nothing meanwhile
    for _ in range(8):
        queue.append(Item("idle"))
    assert shares(queue.take(4)) == {"busy": 2, "idle": 2}  # an equal share, not a catch-up


def test_without_fair_queueing_it_is_first_in_first_out() -> None:
    queue = queue_of(("heavy", 12, 3.0), ("light", 4, 1.0), fair=False)
    assert shares(queue.take(8)) == {"heavy": 8}
    assert shares(queue.take(8)) == {"heavy": 4, "light": 4}


def test_batch_inputs_only_fill_the_room_interactive_ones_leave() -> None:
    queue: FairQueue[Item] = FairQueue()
    for _ in range(6):
        queue.append(Item("offline", service_class=BATCH))
    for _ in range(3):
        queue.append(Item("online"))
    first = queue.take(4)
    assert [i.service_class for i in first] == [INTERACTIVE] * 3 + [BATCH]
    for _ in range(4):
        queue.append(Item("online"))
    assert {i.service_class for i in queue.take(4)} == {INTERACTIVE}  # a full batch of them
    assert queue.depth(BATCH) == 5 and queue.depth(INTERACTIVE) == 0
    assert [i.service_class for i in queue.take(8)] == [BATCH] * 5


def test_waiting_counts_each_tenants_inputs_for_its_bound() -> None:
    queue = queue_of(("flood", 10, 1.0), ("light", 2, 1.0))
    assert queue.waiting("flood") == 10 and queue.waiting("light") == 2 and queue.waiting("other") == 0
    queue.take(4)
    assert queue.waiting("flood") == 8 and queue.waiting("light") == 0
    assert len(queue) == 8


def test_the_oldest_input_is_found_whatever_order_the_tenants_are_served_in() -> None:
    queue: FairQueue[Item] = FairQueue()
    for t in range(4):
        queue.append(Item("flood", enqueued_at=float(t)))
    queue.append(Item("light", enqueued_at=10.0))
    taken = queue.take(2)  # flood@0, then light (equal weights alternate)
    assert [i.enqueued_at for i in taken] == [0.0, 10.0]
    assert queue.oldest_enqueued_at() == 1.0


def test_finish_tags_of_idle_tenants_are_forgotten() -> None:
    queue: FairQueue[Item] = FairQueue()
    for n in range(500):  # many one-off tenants
        queue.append(Item(f"t{n}"))
        queue.take(1)
    assert len(queue._classes[INTERACTIVE].finish) <= 66


# the batcher takes its batches from the fair queue


@dataclass
class Recorder:
    batches: list[list[Any]] = field(default_factory=list)

    def __call__(self, features: list[Any], top_k: int) -> Sequence[Any]:
        self.batches.append(list(features))
        return features


@pytest.fixture
async def executor() -> AsyncIterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown(wait=True)


@pytest.mark.anyio
async def test_the_batcher_gives_weight_3_three_times_the_share_of_weight_1(
    executor: ThreadPoolExecutor,
) -> None:
    model, stats = Recorder(), list[BatchStats]()
    batcher = Batcher(
        model, executor, max_batch_size=8, max_delay_s=3600, clock=FakeClock(), on_batch=stats.append
    )
    futures = [batcher.submit("a", top_k=1, tenant="a", weight=3) for _ in range(24)]
    futures += [batcher.submit("b", top_k=1, tenant="b", weight=1) for _ in range(24)]
    batcher.start()
    await asyncio.gather(*futures)
    assert [Counter(b) for b in model.batches[:3]] == [Counter(a=6, b=2)] * 3
    assert all(s.classes == [INTERACTIVE] * s.size for s in stats)


@pytest.mark.anyio
async def test_the_batcher_serves_batch_class_inputs_after_interactive_ones(
    executor: ThreadPoolExecutor,
) -> None:
    model = Recorder()
    # nobody else arriving: the last, partial batch closes at once
    batcher = Batcher(
        model, executor, max_batch_size=4, max_delay_s=3600, clock=FakeClock(), arriving=lambda: 0
    )
    later = [batcher.submit(f"b{i}", top_k=1, tenant="x", service_class=BATCH) for i in range(4)]
    first = [batcher.submit(f"i{i}", top_k=1, tenant="y") for i in range(6)]
    batcher.start()
    await asyncio.gather(*first, *later)
    assert model.batches == [["i0", "i1", "i2", "i3"], ["i4", "i5", "b0", "b1"], ["b2", "b3"]]
