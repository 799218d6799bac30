"""The dynamic batcher, driven deterministically: pre-queued items, a fake model held on an event,
and an injected clock. No test waits on wall-clock timing to decide what it asserts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from service.errors import DeadlineExceeded
from service.serving.batching import Batcher, BatchStats, Tally
from service.serving.devices import CORES, computing_since, on_threads
from tests.serving.test_cores import _until

pytestmark = pytest.mark.anyio


@dataclass
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeModel:
    """Echoes each feature upper-cased; records every batch; can be held mid-batch; fails on 'bad'."""

    batches: list[list[Any]] = field(default_factory=list)
    hold: threading.Event | None = None
    entered: threading.Event = field(default_factory=threading.Event)
    short_by_one: bool = False

    def __call__(self, features: list[Any], top_k: int) -> Sequence[Any]:
        self.batches.append(list(features))
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(timeout=30)
        if "bad" in features:
            raise ValueError("the model cannot take 'bad'")
        outputs = [f.upper() for f in features]
        return outputs[:-1] if self.short_by_one else outputs


@pytest.fixture
async def executor() -> AsyncIterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown(wait=True)


def make(
    model: FakeModel,
    executor: ThreadPoolExecutor,
    clock: FakeClock,
    *,
    size: int = 4,
    delay_s: float = 0.005,
    stats: list[BatchStats] | None = None,
) -> Batcher:
    return Batcher(
        model,
        executor,
        max_batch_size=size,
        max_delay_s=delay_s,
        clock=clock,
        on_batch=stats.append if stats is not None else None,
    )


async def test_a_full_queue_closes_batches_on_size(executor: ThreadPoolExecutor) -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = make(model, executor, clock, size=4, delay_s=3600)  # a deadline close would hang
    futures = [batcher.submit(f"x{i}", top_k=1) for i in range(8)]
    batcher.start()
    assert await asyncio.gather(*futures) == [f"X{i}" for i in range(8)]
    assert model.batches == [[f"x{i}" for i in range(4)], [f"x{i}" for i in range(4, 8)]]
    await batcher.close()


async def test_a_partial_batch_closes_when_its_oldest_input_has_waited_max_delay(
    executor: ThreadPoolExecutor,
) -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = make(model, executor, clock, size=8, delay_s=0.05)
    futures = [batcher.submit("a", top_k=1), batch_b := batcher.submit("b", top_k=1)]
    clock.now = 0.051  # the oldest input's wait is over before the worker even looks
    batcher.start()
    assert await asyncio.gather(*futures) == ["A", "B"] and batch_b.done()
    assert model.batches == [["a", "b"]]
    await batcher.close()


async def test_a_lone_request_is_not_held_for_company(executor: ThreadPoolExecutor) -> None:
    model, clock = FakeModel(), FakeClock()  # frozen clock: only the max_delay timer can close it
    batcher = make(model, executor, clock, size=32, delay_s=0.002)
    batcher.start()
    assert await batcher.submit("solo", top_k=1) == "SOLO"
    assert model.batches == [["solo"]]
    await batcher.close()


async def test_under_load_the_next_batches_are_full_and_in_order(executor: ThreadPoolExecutor) -> None:
    hold = threading.Event()
    model, clock, stats = FakeModel(hold=hold), FakeClock(), []
    batcher = make(model, executor, clock, size=4, delay_s=0.001, stats=stats)
    first = batcher.submit("first", top_k=1)
    clock.now = 1.0
    batcher.start()
    await asyncio.to_thread(model.entered.wait, 30)  # the first batch is on the "device"
    assert batcher.in_flight == 1 and batcher.load == 1
    queued = [batcher.submit(f"q{i}", top_k=1) for i in range(10)]
    assert batcher.load == 11
    hold.set()
    assert await first == "FIRST"
    assert await asyncio.gather(*queued) == [f"Q{i}" for i in range(10)]
    assert [len(b) for b in model.batches] == [1, 4, 4, 2]
    assert [f for b in model.batches[1:] for f in b] == [f"q{i}" for i in range(10)]
    assert [s.size for s in stats] == [1, 4, 4, 2]
    assert stats[1].queue_wait_s == [0.0] * 4  # clock frozen at 1.0 since they were queued
    await batcher.close()


async def test_expired_inputs_get_504_and_never_reach_the_model(executor: ThreadPoolExecutor) -> None:
    model, clock, stats = FakeModel(), FakeClock(), []
    batcher = make(model, executor, clock, size=4, stats=stats)
    late = batcher.submit("late", top_k=1, deadline=0.5)
    on_time = batcher.submit("on-time", top_k=1, deadline=5.0)
    clock.now = 1.0
    batcher.start()
    assert await on_time == "ON-TIME"
    with pytest.raises(DeadlineExceeded):
        await late
    assert model.batches == [["on-time"]]
    assert stats[0].dropped_expired == 1
    await batcher.close()


async def test_cancelled_inputs_are_dropped_before_the_model(executor: ThreadPoolExecutor) -> None:
    model, clock, stats = FakeModel(), FakeClock(), []
    batcher = make(model, executor, clock, size=4, stats=stats)
    gone = batcher.submit("gone", top_k=1)
    kept = batcher.submit("kept", top_k=1)
    gone.cancel()  # what the router does when the client disconnects
    clock.now = 1.0
    batcher.start()
    assert await kept == "KEPT"
    assert model.batches == [["kept"]] and stats[0].dropped_cancelled == 1
    await batcher.close()


async def test_one_bad_input_fails_only_itself(executor: ThreadPoolExecutor) -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = make(model, executor, clock, size=3, delay_s=3600)
    futures = [batcher.submit(f, top_k=1) for f in ("ok1", "bad", "ok2")]
    batcher.start()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[0] == "OK1" and results[2] == "OK2"
    assert isinstance(results[1], ValueError)
    assert model.batches[0] == ["ok1", "bad", "ok2"]  # tried together first, then one by one
    await batcher.close()


async def test_a_model_that_loses_outputs_fails_the_inputs_instead_of_misrouting(
    executor: ThreadPoolExecutor,
) -> None:
    model, clock = FakeModel(short_by_one=True), FakeClock()
    batcher = make(model, executor, clock, size=2, delay_s=3600)
    futures = [batcher.submit(f, top_k=1) for f in ("a", "b")]
    batcher.start()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "outputs for" in str(r) for r in results)
    await batcher.close()


async def test_close_finishes_every_queued_input(executor: ThreadPoolExecutor) -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = make(model, executor, clock, size=4, delay_s=3600)
    futures = [batcher.submit(f"d{i}", top_k=1) for i in range(6)]
    batcher.start()
    await batcher.close()  # closing also closes a partial batch without waiting out its delay
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [f"D{i}" for i in range(6)]
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("after", top_k=1)


async def test_a_batch_closes_at_once_when_no_other_request_is_on_its_way(
    executor: ThreadPoolExecutor,
) -> None:
    model, clock = FakeModel(), FakeClock()
    on_the_way = [1]
    batcher = Batcher(
        model, executor, max_batch_size=4, max_delay_s=3600, clock=clock, arriving=lambda: on_the_way[0]
    )
    batcher.start()
    first = batcher.submit("a", top_k=1)  # one more request is still being decoded: wait for it
    await asyncio.sleep(0)
    assert not first.done() and model.batches == []
    on_the_way[0] = 0
    second = batcher.submit("b", top_k=1)  # it arrived, and nobody else is coming
    assert await asyncio.wait_for(asyncio.gather(first, second), 10) == ["A", "B"]
    assert model.batches == [["a", "b"]]
    alone = batcher.submit("c", top_k=1)  # an idle gateway runs a lone request without delay
    assert await asyncio.wait_for(alone, 10) == "C"
    await batcher.close()


async def test_each_request_is_charged_its_share_of_each_batch_it_rode_in(
    executor: ThreadPoolExecutor,
) -> None:
    model, clock, stats = FakeModel(), FakeClock(), []
    batcher = make(model, executor, clock, size=4, delay_s=3600, stats=stats)
    first, second = Tally(), Tally()
    clock.now = 1.0
    futures = [batcher.submit(f, top_k=1, tally=first) for f in ("a", "b", "c")]
    clock.now = 1.5
    futures += [batcher.submit(f, top_k=1, tally=second) for f in ("d", "e", "f", "g", "h")]
    clock.now = 2.0
    batcher.start()
    await asyncio.gather(*futures)
    assert [s.size for s in stats] == [4, 4]
    one, two = (s.forward_s / 4 for s in stats)
    assert first.compute_s == pytest.approx(3 * one)
    assert second.compute_s == pytest.approx(one + 4 * two)
    assert first.compute_s + second.compute_s == pytest.approx(sum(s.forward_s for s in stats))
    assert first.queue_s == 1.0  # its longest wait, on the injected clock
    assert second.queue_s == 0.5


async def test_after_a_failed_batch_each_input_is_charged_before_its_request_wakes(
    executor: ThreadPoolExecutor,
) -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = make(model, executor, clock, size=3, delay_s=3600)
    tallies = [Tally(), Tally(), Tally()]
    futures = [
        batcher.submit(f, top_k=1, tally=t) for f, t in zip(("ok1", "bad", "ok2"), tallies, strict=True)
    ]
    batcher.start()
    for future, tally in zip(futures, tallies, strict=True):
        await asyncio.wait([future])
        assert tally.compute_s > 0  # set when the future resolves, not after the whole batch
    assert futures[0].result() == "OK1" and isinstance(futures[1].exception(), ValueError)


async def _two_lanes(
    inputs: int, batches_at_once: int, *, tally: Tally | None = None, **batching: Any
) -> list[BatchStats]:
    """Run `inputs` queued inputs through a batcher of two lanes whose model lets a batch through
    only with `batches_at_once` batches in it at the same time; each batch's stats."""
    together = threading.Barrier(batches_at_once)

    def model(features: list[Any], top_k: int) -> Sequence[Any]:
        together.wait(timeout=30)
        return [f.upper() for f in features]

    pool = ThreadPoolExecutor(2)
    stats: list[BatchStats] = []
    batcher = Batcher(model, pool, clock=FakeClock(), on_batch=stats.append, pipeline=2, **batching)
    futures = [batcher.submit(f"x{i}", top_k=1, tally=tally) for i in range(inputs)]
    batcher.start()
    assert await asyncio.wait_for(asyncio.gather(*futures), 30) == [f"X{i}" for i in range(inputs)]
    await batcher.close()
    pool.shutdown(wait=True)
    assert not together.broken and batcher.in_flight == 0
    return stats


@pytest.mark.parametrize(("spread", "sizes"), [(True, [4, 4]), (False, [8])])
async def test_cpu_lanes_share_the_queue_between_them(spread: bool, sizes: list[int]) -> None:
    """Two CPU lanes with eight inputs queued: four on each, side by side (without `spread`, as on
    a GPU, one batch of eight)."""
    stats = await _two_lanes(8, len(sizes), max_batch_size=8, max_delay_s=0, spread=spread)
    assert sorted(s.size for s in stats) == sizes


async def test_with_a_pipeline_of_two_the_next_batch_runs_while_one_is_on_the_device() -> None:
    tally = Tally()
    started = time.perf_counter()
    stats = await _two_lanes(4, 2, tally=tally, max_batch_size=2, max_delay_s=3600)
    elapsed = time.perf_counter() - started
    # each batch is charged only the time it had the device to itself: never more than the wall clock
    assert [s.size for s in stats] == [2, 2]
    assert tally.compute_s == pytest.approx(sum(s.forward_s for s in stats))
    assert tally.compute_s <= elapsed


async def test_a_cpu_pass_is_charged_from_when_it_got_its_cores_not_while_it_waited(
    executor: ThreadPoolExecutor,
) -> None:
    """A lane's pass that waits for the cores another pass holds (a lone batch on every thread)
    is charged its own computing only: the wait is not device time the tenant used."""
    weights = torch.rand(256, 256)
    released: list[float] = []

    def wide_pass() -> None:
        with CORES.held(CORES.count):
            _until(lambda: len(CORES.line) == 1)  # the lane's pass waits in line for the cores
            for _ in range(200):  # a real pass on every core, while the lane waits
                weights @ weights
            released.append(time.perf_counter())

    def lane(features: list[Any], top_k: int) -> Sequence[Any]:
        return on_threads(1, lambda: [f.upper() for f in features])

    tally = Tally()
    batcher = Batcher(
        lane, executor, max_batch_size=1, max_delay_s=0, clock=FakeClock(), computing_since=computing_since
    )
    holder = threading.Thread(target=wide_pass)
    holder.start()
    _until(lambda: CORES.free == 0)
    future = batcher.submit("a", top_k=1, tally=tally)
    batcher.start()
    assert await asyncio.wait_for(future, 30) == "A"
    answered = time.perf_counter()
    holder.join()
    await batcher.close()
    assert 0 < tally.compute_s <= answered - released[0]
