"""Rate-limit buckets and in-flight caps shared in memory by a gateway's processes
(service/tenancy/shared_limits.py): exact across processes drawing at once, not stalled by a
process killed mid-check, a full table forgetting only the bucket closest to full, and a dead
worker's slots given back."""

from __future__ import annotations

import asyncio
import fcntl
import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from service.tenancy.ratelimit import Bucket, MemoryBuckets
from service.tenancy.shared_limits import WAYS, SharedBuckets, SharedSlots, shared_limits

CONTEXT = multiprocessing.get_context("spawn")  # as the gateway starts its workers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _draw(path: Path, start: Barrier, tries: int, results: Connection) -> None:
    """A worker's part: `tries` checks against the key's and the tenant's buckets, as fast as it can."""
    buckets = SharedBuckets(path)
    limits = [Bucket("key:k1", rate=1e-6, burst=1500), Bucket("tenant:t1", rate=1e-6, burst=1000)]
    start.wait()
    results.send(sum(buckets.take_now(limits).allowed for _ in range(tries)))


def test_processes_drawing_at_once_get_exactly_the_burst_between_them(tmp_path: Path) -> None:
    path, workers = tmp_path / "rate-limits", 4
    start = CONTEXT.Barrier(workers)
    pipes = [CONTEXT.Pipe(duplex=False) for _ in range(workers)]
    processes = [CONTEXT.Process(target=_draw, args=(path, start, 1000, sender)) for _, sender in pipes]
    for process in processes:
        process.start()
    allowed = [receiver.recv() for receiver, _ in pipes]
    for process in processes:
        process.join()
    # 4000 checks against a tenant allowed 1000 (the key's 1500 never binds): no token taken twice
    assert sum(allowed) == 1000, allowed
    left = SharedBuckets(path).take_now([Bucket("tenant:t1", rate=1e-6, burst=1000)])
    assert not left.allowed and left.remaining == 0


def _hold_the_lock(path: Path, held: Connection) -> None:
    """Take the table's lock and keep it until killed (as a worker killed mid-check would)."""
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    held.send(True)
    held.recv()  # blocks: the parent kills this process instead of answering


def test_a_process_killed_holding_the_lock_does_not_stall_the_others(tmp_path: Path) -> None:
    path = tmp_path / "rate-limits"
    buckets = SharedBuckets(path)
    ours, theirs = CONTEXT.Pipe()
    holder = CONTEXT.Process(target=_hold_the_lock, args=(path, theirs))
    holder.start()
    assert ours.recv()  # it holds the lock now
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    answers: list[bool] = []
    check = threading.Thread(
        target=lambda: answers.append(buckets.take_now([Bucket("key:a", 1, 2)]).allowed), daemon=True
    )
    check.start()
    check.join(timeout=30)  # the kernel dropped the dead holder's lock: the check goes through
    assert answers == [True]


def test_a_bucket_full_again_gives_its_slot_to_another_and_loses_nothing(tmp_path: Path) -> None:
    clock = Clock()
    shared = SharedBuckets(tmp_path / "rate-limits", sets=1, clock=clock)
    memory = MemoryBuckets(clock)
    first = [Bucket(f"key:first-{i}", rate=1, burst=10) for i in range(WAYS)]
    for bucket in first:  # every slot of the one set taken, each bucket refilling
        assert shared.take_now([bucket]).remaining == memory.take_now([bucket]).remaining == 9
    clock.now += 1  # all full again
    later = [Bucket(f"key:later-{i}", rate=1, burst=10) for i in range(WAYS)]
    for bucket in later:  # take the slots of the full buckets
        assert shared.take_now([bucket]).remaining == 9
    for bucket in first:  # forgotten, and still right: a full bucket is a bucket never used
        assert shared.take_now([bucket]).remaining == memory.take_now([bucket]).remaining == 9


def test_a_full_set_forgets_the_bucket_closest_to_full(tmp_path: Path) -> None:
    clock = Clock()
    shared = SharedBuckets(tmp_path / "rate-limits", sets=1, clock=clock)
    buckets = [Bucket(f"key:{i}", rate=1, burst=10) for i in range(WAYS)]
    for drawn, bucket in enumerate(buckets):  # bucket i has drawn i + 1 tokens: 0 is the fullest
        for _ in range(drawn + 1):
            shared.take_now([bucket])
    assert shared.take_now([Bucket("key:new", rate=1, burst=10)]).remaining == 9
    assert shared.take_now([buckets[0]]).remaining == 9  # forgotten: full again (it had 9)
    assert shared.take_now([buckets[-1]]).remaining == 10 - WAYS - 1  # kept


def _hold(path: Path, worker: int, start: Barrier, tries: int, results: Connection) -> None:
    """Worker `worker`'s part: take `tries` of the tenant's slots, keeping what it gets."""
    slots = SharedSlots(path, workers=4, worker=worker)
    start.wait()

    async def take() -> int:
        return sum([await slots.acquire("tenant_a", 500) for _ in range(tries)])

    results.send(asyncio.run(take()))


def test_workers_taking_slots_at_once_never_pass_the_cap_and_a_dead_ones_come_back(tmp_path: Path) -> None:
    path = tmp_path / "in-flight"
    start = CONTEXT.Barrier(4)
    pipes = [CONTEXT.Pipe(duplex=False) for _ in range(4)]
    processes = [
        CONTEXT.Process(target=_hold, args=(path, worker, start, 500, sender))
        for worker, (_, sender) in enumerate(pipes)
    ]
    for process in processes:
        process.start()
    held = [receiver.recv() for receiver, _ in pipes]
    for process in processes:
        process.join()
    assert sum(held) == 500, held  # 2,000 tries at a cap of 500 from four processes at once

    supervisor = SharedSlots(path, workers=4)
    worker = max(range(4), key=held.__getitem__)
    again = SharedSlots(path, workers=4, worker=worker)
    assert not asyncio.run(again.acquire("tenant_a", 500))  # the processes exited holding them all
    supervisor.forget_worker(worker)  # as the supervisor does before starting its replacement

    async def retake() -> list[bool]:
        return [await again.acquire("tenant_a", 500) for _ in range(held[worker] + 1)]

    assert asyncio.run(retake()) == [True] * held[worker] + [False]


def test_a_slot_given_back_is_free_for_the_next_request_and_other_tenants_count_apart(tmp_path: Path) -> None:
    one = SharedSlots(tmp_path / "in-flight", workers=2, worker=0)
    two = SharedSlots(tmp_path / "in-flight", workers=2, worker=1)

    async def run() -> None:
        assert await one.acquire("tenant_a", 2) and await two.acquire("tenant_a", 2)
        assert not await one.acquire("tenant_a", 2)  # two in flight, one in each worker
        assert await one.acquire("tenant_b", 1)  # another tenant's cap is its own
        await two.release("tenant_a")
        assert await one.acquire("tenant_a", 2)  # the slot worker 1 gave back
        await two.release("tenant_a")  # worker 1 holds none now: nothing to give back
        assert not await two.acquire("tenant_a", 2)

    asyncio.run(run())


def test_without_room_for_the_tables_each_worker_counts_alone_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert shared_limits(tmp_path / "gone", workers=2) == (None, None)  # the folder is not there
    assert "each worker counts alone" in caplog.text
    buckets, slots = shared_limits(tmp_path, workers=2, buckets=False)  # Redis keeps the buckets
    assert buckets is None and isinstance(slots, SharedSlots)
