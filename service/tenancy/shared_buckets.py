"""Rate-limit buckets in shared memory, for the processes of one gateway (`MAAS_WORKERS` > 1).

Every front-end worker must draw from the same buckets. They live in a small file in the engine's
private folder (on /dev/shm where there is one) that each worker maps: a table of `sets` sets of
`WAYS` slots, each slot one bucket (a hash of its name, its tokens, when they were counted, and
when it will be full again). A check takes all of a request's buckets at once, all or nothing
(`decide`, as in one process), under an exclusive `flock` on the file and a thread lock (flock
does not exclude the threads of one process). The kernel drops a flock when its holder dies, so
a killed worker never stalls the others. A check costs microseconds; asking the model process
cost a round trip per request (a tenth of the very small ViT's throughput, loadtests/ab.py).

A bucket that is full again is the same as a bucket never used, so its slot is free for another.
Only when every slot of a set holds a bucket still refilling (more than `WAYS` busy buckets
hashing to one set: tens of thousands busy at once) is the one closest to full forgotten, which
gives its owner back at most what it had left to refill; that is logged.

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

from service.tenancy.ratelimit import Bucket, Verdict, decide

log = logging.getLogger(__name__)

RATE_LIMITS_FILE = "rate-limits"  # in the engine's folder, beside its socket
WAYS = 8  # slots per set: a bucket lives in one of its set's
SETS = 8192  # 65,536 buckets, 2 MiB
_SLOT = struct.Struct("<Qddd")  # name hash (0: never used), tokens, counted at, full again at
_HELD = math.inf  # `full at` of a slot taken by this check, not yet written


class SharedBuckets:
    """Token buckets shared by every process that opens the same file (see the module)."""

    def __init__(self, path: Path, *, sets: int = SETS, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.sets = sets
        self._clock = clock
        self._lock = threading.Lock()
        self._last_warning = -math.inf
        size = sets * WAYS * _SLOT.size
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            with self._locked():  # whichever process comes first sizes it; the rest find it sized
                if os.fstat(self._fd).st_size < size:
                    os.ftruncate(self._fd, size)  # zeros: every slot never used
            self._map = mmap.mmap(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise

    async def take(self, buckets: Sequence[Bucket]) -> Verdict:
        return self.take_now(buckets)

    async def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    def take_now(self, buckets: Sequence[Bucket]) -> Verdict:
        with self._lock, self._locked():
            now = self._clock()
            keys = [_hash(bucket.name) for bucket in buckets]
            slots, tokens = [], []
            for bucket, key in zip(buckets, keys, strict=True):
                slot, held = self._find(key, now)
                slots.append(slot)
                if held is None:  # not held: full
                    tokens.append(bucket.burst)
                else:
                    left, at = held
                    tokens.append(min(bucket.burst, left + max(0.0, now - at) * bucket.rate))
            verdict, after = decide(buckets, tokens)
            for bucket, key, slot, left in zip(buckets, keys, slots, after, strict=True):
                full_at = now + max(0.0, bucket.burst - left) / bucket.rate
                _SLOT.pack_into(self._map, slot, key, left, now, full_at)
            return verdict

    def _find(self, key: int, now: float) -> tuple[int, tuple[float, float] | None]:
        """The offset of `key`'s slot and its (tokens, counted at); None for a bucket not held (a
        free slot is taken for it, marked held until written)."""
        first = (key % self.sets) * WAYS * _SLOT.size
        offsets = range(first, first + WAYS * _SLOT.size, _SLOT.size)
        slots = [(offset, _SLOT.unpack_from(self._map, offset)) for offset in offsets]
        for offset, (found, tokens, at, _) in slots:
            if found == key:
                return offset, (tokens, at)
        free = [offset for offset, (found, _, _, full_at) in slots if not found or full_at <= now]
        if free:
            offset = free[0]
        else:  # every slot refilling: forget the one closest to full (see the module)
            offset = min(slots, key=lambda slot: slot[1][3])[0]
            if now - self._last_warning > 10:
                self._last_warning = now
                log.warning(
                    "rate limiter: %d buckets refilling in one set of %s; forgot the fullest", WAYS, self.path
                )
        _SLOT.pack_into(self._map, offset, key, 0.0, now, _HELD)
        return offset, None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive flock on the file for the `with` block (other processes wait)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


def _hash(name: str) -> int:
    """A bucket's name as 64 bits, never 0 (a slot never used)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") or 1
