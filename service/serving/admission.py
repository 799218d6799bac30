"""Admission to the CPU stage (decoding and preprocessing): a few requests at a time, fairly.

Decoding a JPEG and running an image processor hold the GIL much of their time. Left to the
thread pool, every request's inputs decode at once and share the interpreter round-robin: under
a flood of 24 requests a light tenant's one decode takes about 25 times its own time, and a
batch job's inputs compete with interactive ones. `PreprocessGate` lets at most `limit` requests
decode at once in this process; the others wait in a `FairQueue` (the batch queue's own start-time
fair tags and weights, service/serving/fairqueue.py): interactive before batch, and across tenants
by weight, so a light tenant's request is next after the ones decoding, not behind the flood.

A waiting request still answers 504 at its deadline, and one whose caller goes away (cancelled)
stops waiting and is never admitted; a slot handed to a caller that had just left is passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from service.serving.deadlines import before_deadline
from service.serving.fairqueue import ANYONE, FairQueue, ServiceClass, Share
from service.settings import Settings

STAGE = "waiting to decode and preprocess the inputs"


def preprocess_concurrency(settings: Settings) -> int:
    """`MAAS_PREPROCESS_CONCURRENCY`, or when 0 the cores this process may run on."""
    if settings.preprocess_concurrency:
        return settings.preprocess_concurrency
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class _Waiter:
    """One request waiting for a slot (what the fair queue orders)."""

    tenant: str
    weight: float
    service_class: ServiceClass
    enqueued_at: float
    admitted: asyncio.Future[None]


@dataclass
class PreprocessGate:
    """At most `limit` requests in the CPU stage at once; the rest admitted fairly (see the module)."""

    limit: int
    fair: bool = True  # False: first in, first out within each class (MAAS_FAIR_QUEUEING=false)
    busy: int = 0  # requests in the stage now
    _queue: FairQueue[_Waiter] = field(init=False)

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"the preprocessing concurrency must be at least 1; got {self.limit}")
        self._queue = FairQueue(fair=self.fair)

    @property
    def waiting(self) -> int:
        """Requests queued for a slot (some may have left and not yet been skipped)."""
        return len(self._queue)

    @contextlib.asynccontextmanager
    async def admit(self, share: Share = ANYONE, deadline: float | None = None) -> AsyncIterator[None]:
        """Hold a slot of the stage for the body of the `async with`: at once when one is free and
        nobody waits, else when the queue reaches this request. 504 if `deadline` passes first."""
        await self._acquire(share, deadline)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, share: Share, deadline: float | None) -> None:
        if self.busy < self.limit and not self._queue:
            self.busy += 1
            return
        admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(
            _Waiter(share.tenant, share.weight, share.service_class, time.monotonic(), admitted)
        )
        self._dispatch()  # a slot may be free behind waiters that left
        try:
            if deadline is None:
                await asyncio.shield(admitted)
            else:
                await before_deadline(deadline, STAGE, asyncio.shield(admitted))
        except BaseException:
            if admitted.done() and not admitted.cancelled():
                self._release()  # the slot came as the caller left: pass it on
            else:
                admitted.cancel()  # skipped when its turn comes
            raise

    def _release(self) -> None:
        self.busy -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand the free slots to the next waiters still there, in the queue's order."""
        while self.busy < self.limit and self._queue:
            [waiter] = self._queue.take(1)
            if not waiter.admitted.done():
                waiter.admitted.set_result(None)
                self.busy += 1
