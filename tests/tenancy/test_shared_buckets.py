"""Rate-limit buckets shared in memory by a gateway's processes (service/tenancy/shared_buckets.py):
exact across processes drawing at once, not stalled by a process killed mid-check, and a full
table forgetting only the bucket closest to full."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path

from service.tenancy.ratelimit import Bucket, MemoryBuckets
from service.tenancy.shared_buckets import WAYS, SharedBuckets

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
