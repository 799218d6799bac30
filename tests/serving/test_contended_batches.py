"""A CPU replica's batcher while its queue is shared: batches bounded by measured forward time,
batch-class inputs kept out of interactive batches and held back while interactive inputs come.
Driven by an injected clock and a fixed service rate; no test waits on wall-clock timing."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.serving.batching import Batcher, ServiceRate
from service.serving.fairqueue import ServiceClass
from service.serving.manifests import Batching
from tests.serving.test_batching import FakeClock
from tests.serving.test_fairqueue import Recorder, executor  # noqa: F401 (a fixture)

BATCH = ServiceClass.BATCH


def cpu_batcher(model: Recorder, pool: ThreadPoolExecutor, clock: FakeClock, inputs_per_s: float) -> Batcher:
    """A batcher bounded to 0.1 s of forward time while shared, its rate fixed at `inputs_per_s`."""
    return Batcher(
        model,
        pool,
        max_batch_size=8,
        max_delay_s=3600,
        clock=clock,
        arriving=lambda: 0,
        max_contended_batch_s=0.1,
        rate=ServiceRate(alpha=0.0, inputs_per_s=inputs_per_s),
    )


@pytest.mark.anyio
async def test_a_shared_queue_gets_batches_that_fit_the_time_bound(executor: ThreadPoolExecutor) -> None:  # noqa: F811
    model = Recorder()
    batcher = cpu_batcher(model, executor, FakeClock(), inputs_per_s=20)  # 0.1 s: 2 inputs
    futures = [batcher.submit(f"a{i}", top_k=1, tenant="a") for i in range(6)]
    futures += [batcher.submit(f"b{i}", top_k=1, tenant="b") for i in range(2)]
    batcher.start()
    await asyncio.gather(*futures)
    assert [len(b) for b in model.batches[:2]] == [2, 2] and model.batches[0] == ["a0", "b0"]


@pytest.mark.anyio
async def test_one_tenant_alone_gets_full_batches(executor: ThreadPoolExecutor) -> None:  # noqa: F811
    model = Recorder()
    batcher = cpu_batcher(model, executor, FakeClock(), inputs_per_s=20)
    futures = [batcher.submit(f"a{i}", top_k=1, tenant="a") for i in range(8)]
    batcher.start()
    await asyncio.gather(*futures)
    assert [len(b) for b in model.batches] == [8]


@pytest.mark.anyio
async def test_batch_inputs_stay_out_of_interactive_batches_and_wait_for_a_pause(
    executor: ThreadPoolExecutor,  # noqa: F811
) -> None:
    model, clock = Recorder(), FakeClock()
    batcher = cpu_batcher(model, executor, clock, inputs_per_s=40)  # 0.1 s: 4 inputs
    job = [batcher.submit(f"b{i}", top_k=1, tenant="job", service_class=BATCH) for i in range(4)]
    interactive = [batcher.submit(f"i{i}", top_k=1, tenant="user") for i in range(3)]
    batcher.start()
    await asyncio.gather(*interactive, *job)
    # the job's first batch may run (none ran yet), but not inside the interactive one
    assert model.batches == [["i0", "i1", "i2"], ["b0", "b1", "b2", "b3"]]

    held = batcher.submit("b4", top_k=1, tenant="job", service_class=BATCH)
    await batcher.submit("i3", top_k=1, tenant="user")
    for _ in range(10):
        await asyncio.sleep(0)
    assert not held.done() and model.batches[-1] == ["i3"]  # interactive inputs came just now
    clock.now = 0.3  # a pause of interactive inputs longer than 0.25 s
    batcher.poke()
    await held
    assert model.batches[-1] == ["b4"]
    await batcher.close()


def test_the_bound_is_on_by_default_on_a_cpu_only() -> None:
    assert Batching().contended_batch_s("cpu") == pytest.approx(0.1)
    assert Batching().contended_batch_s("cuda") is None
    assert Batching(max_contended_batch_ms=0).contended_batch_s("cpu") is None
    assert Batching(max_contended_batch_ms=250).contended_batch_s("cuda") == pytest.approx(0.25)
