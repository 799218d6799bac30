"""Rate limits and in-flight caps in shared memory, for the processes of one gateway (`MAAS_WORKERS` > 1).

Every front-end worker must draw from the same token buckets and count a tenant's requests in
flight together. Both live in small files in the engine's private folder (on /dev/shm where there
is one) that each worker maps: a table of `sets` sets of `WAYS` slots, one slot per bucket or
tenant, found by a hash of its name. A check runs under an exclusive `flock` on the file and a
thread lock (flock does not exclude the threads of one process). The kernel drops a flock when
its holder dies, so a killed worker never stalls the others. A check costs microseconds; asking
the model process cost a round trip per request (a tenth of the very small ViT's throughput for
a rate-limited tenant, and more for a capped one: loadtests/plans.py).

**Buckets** (`SharedBuckets`): a slot holds a bucket's tokens, when they were counted, and when
it will be full again. A request takes all of its buckets at once, all or nothing (`decide`, as
in one process). A bucket full again is the same as a bucket never used, so its slot is free for
another. Only when every slot of a set holds a bucket still refilling (more than `WAYS` busy
buckets hashing to one set: tens of thousands busy at once) is the one closest to full
forgotten, which gives its owner back at most what it had left to refill; that is logged.

**In-flight slots** (`SharedSlots`): a slot holds one count per worker of a tenant's requests in
flight; the tenant's total is their sum. When a worker dies, the supervisor clears its counts
(`forget_worker`) before starting its replacement, so a crash leaks no slot. A tenant with
nothing in flight frees its slot; with every slot of a set busy (more than `WAYS` tenants with
requests in flight hashing to one set) the request is let in uncounted, and that is logged.

The supervisor makes both files at start, before the workers reserve their pixel arenas; where
/dev/shm cannot hold them (a few MB), each worker counts alone, and that is logged as an error
(`shared_limits`).

The clock is `time.monotonic`, the system's monotonic clock, the same in every process here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from service.tenancy.ratelimit import Bucket, Verdict, decide, refilled

log = logging.getLogger(__name__)

RATE_LIMITS_FILE = "rate-limits"  # in the engine's folder, beside its socket
IN_FLIGHT_FILE = "in-flight"
WAYS = 8  # slots per set: a name lives in one of its set's
SETS = 8192  # buckets: 65,536 slots (2 MiB)
SLOT_SETS = 1024  # tenants in flight: 8,192 slots (12 bytes each with 1 worker, 1 KiB with 256)
_BUCKET = struct.Struct("<Qddd")  # name hash (0: never used), tokens, counted at, full again at
_HELD = math.inf  # `full at` of a slot taken by this check, not yet written


class _SharedTable:
    """A file of `sets` x `WAYS` records of `record`'s layout, mapped, with the lock (see the module)."""

    def __init__(self, path: Path, record: struct.Struct, sets: int) -> None:
        self.path = path
        self.sets = sets
        self.record = record
        self._lock = threading.Lock()
        self._last_warning = -math.inf
        size = sets * WAYS * record.size
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            with self._file_locked():  # whichever process comes first sizes it; the rest find it sized
                if os.fstat(self._fd).st_size < size:  # zeros: every slot never used
                    os.posix_fallocate(self._fd, 0, size)  # ENOSPC now rather than SIGBUS on a later write
            self._map = mmap.mmap(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise

    async def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """This process's threads and every other process wait for the `with` block."""
        with self._lock, self._file_locked():
            yield

    @contextlib.contextmanager
    def _file_locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def set_of(self, key: int) -> list[tuple[int, tuple[float, ...]]]:
        """The (offset, record) of each slot of `key`'s set."""
        first = (key % self.sets) * WAYS * self.record.size
        step = self.record.size
        return [
            (offset, self.record.unpack_from(self._map, offset))
            for offset in range(first, first + WAYS * step, step)
        ]

    def write(self, offset: int, *values: float) -> None:
        self.record.pack_into(self._map, offset, *values)

    def warn(self, message: str, now: float) -> None:
        """`message` logged at most every 10 s."""
        if now - self._last_warning > 10:
            self._last_warning = now
            log.warning("%s (%s)", message, self.path)


class SharedBuckets(_SharedTable):
    """Token buckets shared by every process that opens the same file (see the module)."""

    def __init__(self, path: Path, *, sets: int = SETS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(path, _BUCKET, sets)
        self._clock = clock

    async def take(self, buckets: Sequence[Bucket]) -> Verdict:
        return self.take_now(buckets)

    def take_now(self, buckets: Sequence[Bucket]) -> Verdict:
        with self.locked():
            now = self._clock()
            keys = [name_hash(bucket.name) for bucket in buckets]
            slots, tokens = [], []
            for bucket, key in zip(buckets, keys, strict=True):
                slot, held = self._find(key, now)
                slots.append(slot)
                tokens.append(bucket.burst if held is None else refilled(bucket, *held, now))  # None: full
            verdict, after = decide(buckets, tokens)
            for bucket, key, slot, left in zip(buckets, keys, slots, after, strict=True):
                self.write(slot, key, left, now, now + max(0.0, bucket.burst - left) / bucket.rate)
            return verdict

    def _find(self, key: int, now: float) -> tuple[int, tuple[float, float] | None]:
        """The offset of `key`'s slot and its (tokens, counted at); None for a bucket not held (a
        free slot is taken for it, marked held until written)."""
        slots = self.set_of(key)
        for offset, (found, tokens, at, _) in slots:
            if found == key:
                return offset, (tokens, at)
        free = [offset for offset, (found, _, _, full_at) in slots if not found or full_at <= now]
        if free:
            offset = free[0]
        else:  # every slot refilling: forget the one closest to full (see the module)
            offset = min(slots, key=lambda slot: slot[1][3])[0]
            self.warn(f"rate limiter: {WAYS} buckets refilling in one set; forgot the fullest", now)
        self.write(offset, key, 0.0, now, _HELD)
        return offset, None


class SharedSlots(_SharedTable):
    """Tenants' requests in flight, counted per worker, shared by every process that opens the same
    file with the same `workers` (see the module). `worker` is this process's column."""

    def __init__(self, path: Path, *, workers: int, worker: int = 0, sets: int = SLOT_SETS) -> None:
        super().__init__(path, struct.Struct(f"<Q{workers}I"), sets)
        self.workers = workers
        self.worker = worker

    async def acquire(self, tenant: str, cap: int) -> bool:
        """One of `tenant`'s `cap` slots for this worker, or False when all are taken."""
        key = name_hash(tenant)
        with self.locked():
            slots = self.set_of(key)
            mine = [(offset, counts) for offset, (found, *counts) in slots if found == key]
            if not mine:
                free = [offset for offset, (found, *counts) in slots if not found or not any(counts)]
                if not free:
                    self.warn(
                        f"in-flight caps: {WAYS} tenants busy in one set; let a request in uncounted",
                        time.monotonic(),
                    )
                    return True
                mine = [(free[0], [0] * self.workers)]
            offset, counts = mine[0]
            if sum(counts) >= cap:
                return False
            counts = list(counts)
            counts[self.worker] += 1
            self.write(offset, key, *counts)
            return True

    async def release(self, tenant: str) -> None:
        key = name_hash(tenant)
        with self.locked():
            for offset, (found, *counts) in self.set_of(key):
                if found == key and counts[self.worker]:
                    counts[self.worker] -= 1
                    self.write(offset, key, *counts)
                    return

    def forget_worker(self, worker: int) -> None:
        """Give back every slot `worker` held (it died: its requests are gone)."""
        with self.locked():
            for first in range(0, self.sets * WAYS * self.record.size, self.record.size):
                found, *counts = self.record.unpack_from(self._map, first)
                if found and counts[worker]:
                    counts[worker] = 0
                    self.write(first, found, *counts)


def name_hash(name: str) -> int:
    """A name as 64 bits, never 0 (a slot never used)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") or 1


def shared_limits(
    folder: Path, *, workers: int, worker: int = 0, buckets: bool = True
) -> tuple[SharedBuckets | None, SharedSlots | None]:
    """The gateway's shared tables in `folder` (the buckets only with `buckets`: else Redis keeps
    them), or None for those that cannot be made there, logged: each process then counts alone."""
    try:
        shared = SharedBuckets(folder / RATE_LIMITS_FILE) if buckets else None
        return shared, SharedSlots(folder / IN_FLIGHT_FILE, workers=workers, worker=worker)
    except OSError as exc:
        log.error(
            "no shared memory for the rate limits and in-flight caps (%s): each worker counts alone, "
            "so a tenant may get up to %d x its limits",
            exc,
            workers,
        )
        return None, None
