"""The dynamic batcher: one queue and one worker per model replica.

Each input owns a future. A batch closes when it is full (`max_batch_size`), when its oldest
input has waited `max_delay_ms`, or as soon as no other request for the model is on its way
(being read or decoded): then waiting could only add latency. The worker waits on an event or
that deadline, never polls.
Which inputs a batch takes is the queue's choice (service/serving/fairqueue.py): tenants share it
by weight, and `batch`-class inputs only fill the room `interactive` ones leave.
While the queue is shared (inputs of more than one tenant or class were waiting within the last
`CONTENDED_WINDOW_S`), a batch also takes no more inputs than the measured service rate says fit
in `max_contended_batch_s` of forward time: on a CPU, where a batch costs about the sum of its
inputs, a long batch buys little throughput and holds every other tenant's next input behind it.
Inputs whose request was cancelled (client gone) or whose deadline passed are dropped before
the device is used. The forward pass runs on the replica's own thread, so the event loop
(and the preprocessing of the next requests) goes on meanwhile. If a batch fails, its inputs
are retried one by one, so that one bad input fails only its own request.
With `pipeline` 2 (a GPU replica) the next batch is formed and started while the last one is
still on the device: its copy to the device and the last batch's reading of outputs overlap a
forward pass. A batch is charged the time it had the device to itself (from its start or the
previous batch's end, whichever is later), so overlapping batches are not charged twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from service.errors import DeadlineExceeded
from service.serving.fairqueue import CLASSES, FairQueue, ServiceClass

log = logging.getLogger(__name__)

# (features of a batch, largest top_k in it) -> one output per feature
RunBatch = Callable[[list[Any], int], Sequence[Any]]
Clock = Callable[[], float]
CONTENDED_WINDOW_S = 1.0  # a queue shared this recently counts as shared (light tenants come and go)
# on a replica with a contended bound (a CPU): batch inputs wait until no interactive input has
# been queued or on its way for BATCH_IDLE_S, but a batch of them runs at least every
# `batch_max_wait_s` (MAAS_BATCH_MAX_WAIT_S)
BATCH_IDLE_S = 0.25
BATCH_MAX_WAIT_S = 10.0


@dataclass
class Tally:
    """What one request's inputs cost (for metering): its share of each batch's forward time
    (forward time / batch size, per input) and the longest queue wait among its inputs."""

    compute_s: float = 0.0
    queue_s: float = 0.0
    inputs: int = 0  # set by the route once the body is parsed


@dataclass
class WorkItem:
    """One input waiting for its batch."""

    features: Any
    top_k: int
    future: asyncio.Future[Any]
    enqueued_at: float
    deadline: float | None = None  # on the batcher's clock; None = no deadline
    tally: Tally | None = None  # the request's, shared by its inputs
    tenant: str = ""  # whose share of the queue it counts against
    weight: float = 1.0  # its tenant's weight
    service_class: ServiceClass = ServiceClass.INTERACTIVE


@dataclass
class BatchStats:
    """What the batcher reports after each batch (for metrics and the service-rate estimate)."""

    size: int
    queue_wait_s: list[float]
    forward_s: float
    dropped_expired: int
    dropped_cancelled: int
    classes: list[ServiceClass] = field(default_factory=list)  # each input's, as queue_wait_s


@dataclass
class ServiceRate:
    """An exponentially weighted estimate of inputs served per second, for Retry-After."""

    alpha: float = 0.2
    inputs_per_s: float | None = None

    def observe(self, inputs: int, seconds: float) -> None:
        if inputs <= 0 or seconds <= 0:
            return
        rate = inputs / seconds
        self.inputs_per_s = (
            rate if self.inputs_per_s is None else (self.alpha * rate + (1 - self.alpha) * self.inputs_per_s)
        )


@dataclass
class Batcher:
    """Forms batches for one replica and runs them on its executor (one thread)."""

    run_batch: RunBatch
    executor: Executor
    max_batch_size: int
    max_delay_s: float
    clock: Clock = time.monotonic
    max_contended_batch_s: float | None = None  # a shared queue's batch: at most this forward time
    batch_max_wait_s: float = BATCH_MAX_WAIT_S  # batch inputs held back: one batch at least this often
    on_batch: Callable[[BatchStats], None] | None = None
    name: str = "model"
    # requests for this model being read or decoded right now; None: unknown, always wait
    arriving: Callable[[], int] | None = None
    fair: bool = True  # False: first in, first out within each class (MAAS_FAIR_QUEUEING=false)
    # when a batch called at a perf_counter() reading started computing, read on its thread after
    # it ran (a CPU pass may first wait for its cores: devices.computing_since); charged from then
    computing_since: Callable[[float], float] = lambda called: called
    queue: FairQueue[WorkItem] = field(init=False)
    in_flight: int = 0  # inputs in the batches now on the device
    # batches on the device at once (the executor needs as many threads); 1: one after another
    pipeline: int = 1
    # each batch takes about its lane's share of the inputs in hand (queued and running) rather
    # than all it can (CPU lanes, side by side on separate cores: a batch costs what its size
    # does, and one lane's long batch would leave the other idle under a closed loop; on a GPU
    # one large batch costs about what a small one does, and the lanes only overlap copies)
    spread: bool = False
    # one lane's inputs per second (a batch's inputs over its own duration): what bounds a
    # contended batch's size; `served`: the batcher's, every lane together (for Retry-After)
    rate: ServiceRate = field(default_factory=ServiceRate)
    served: ServiceRate = field(default_factory=ServiceRate)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _closing: bool = False
    _running: set[asyncio.Task[None]] = field(default_factory=set)
    _device_free_at: float = 0.0  # perf_counter() when the last batch came off the device
    _shared_at: float = float("-inf")  # on `clock`: when the queue last held several tenants or classes
    _interactive_at: float = float("-inf")  # on `clock`: when an interactive input was last queued or coming
    _batch_class_at: float = float("-inf")  # on `clock`: when a batch last took batch-class inputs

    def __post_init__(self) -> None:
        self.queue = FairQueue(fair=self.fair)

    @property
    def load(self) -> int:
        """Inputs waiting or running: what 'least loaded' compares."""
        return len(self.queue) + self.in_flight

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    def submit(
        self,
        features: Any,
        *,
        top_k: int,
        deadline: float | None = None,
        tally: Tally | None = None,
        tenant: str = "",
        weight: float = 1.0,
        service_class: ServiceClass = ServiceClass.INTERACTIVE,
    ) -> asyncio.Future[Any]:
        """Queue one input of `tenant` (of `weight`, in `service_class`); its future resolves to
        its output (or its error). `tally`, if given, is charged the input's share of its
        batch's forward time and its queue wait."""
        if self._closing:
            raise RuntimeError("batcher is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        item = WorkItem(features, top_k, future, self.clock(), deadline, tally, tenant, weight, service_class)
        if service_class is ServiceClass.INTERACTIVE:
            self._interactive_at = item.enqueued_at
        self.queue.append(item)
        self._wakeup.set()
        return future

    def poke(self) -> None:
        """Re-check whether the open batch should close (e.g. a request stopped arriving)."""
        self._wakeup.set()

    @property
    def accepting(self) -> bool:
        """Whether `submit` takes inputs (false once closing: its model is unloading)."""
        return not self._closing

    async def close(self) -> None:
        """Finish every queued input, then stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _loop(self) -> None:
        while True:
            while len(self._running) >= self.pipeline:  # the next batch forms once it can start
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
            if not self.queue:
                if self._closing:
                    await asyncio.gather(*self._running)
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._wait_until_batch_closes()
            batch, stats = self._take_batch()
            if batch:
                self.in_flight += len(batch)  # from now: the next batch's share counts them
                task = asyncio.get_running_loop().create_task(self._run(batch, stats))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            elif self.on_batch and (stats.dropped_expired or stats.dropped_cancelled):
                self.on_batch(stats)
            if not batch and self.queue and not self._closing:  # batch inputs held back
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._batch_class_held_for())

    def batch_limit(self) -> int:
        """The most inputs the next batch takes: `max_batch_size`, or while the queue is shared
        what the measured rate says fits in `max_contended_batch_s` (at least 1)."""
        now = self.clock()
        if self.queue.shared():
            self._shared_at = now
        rate = self.rate.inputs_per_s
        if self.max_contended_batch_s is None or rate is None or now - self._shared_at > CONTENDED_WINDOW_S:
            return self.max_batch_size
        return max(1, min(self.max_batch_size, int(self.max_contended_batch_s * rate)))

    async def _wait_until_batch_closes(self) -> None:
        """Return when the queue holds a full batch, or the oldest input has waited max_delay."""
        while len(self.queue) < self.batch_limit() and not self._closing:
            if self.arriving is not None and self.arriving() == 0:
                return  # nobody else is coming: do not hold the batch for company
            remaining = self.queue.oldest_enqueued_at() + self.max_delay_s - self.clock()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return  # the oldest input's wait is over
            if not self.queue:
                return

    def _take_batch(self) -> tuple[list[WorkItem], BatchStats]:
        limit = self.batch_limit()
        now = self.clock()
        batch: list[WorkItem] = []
        expired = cancelled = 0
        bounded = limit < self.max_batch_size  # then inputs cost about their sum: see `_classes_to_take`
        if self.spread and self.pipeline > 1:  # a lane takes about its share of the inputs in hand
            limit = min(limit, max(1, -(-(len(self.queue) + self.in_flight) // self.pipeline)))
        while self.queue and len(batch) < limit:
            classes = self._classes_to_take(bounded, batch)
            if not classes:
                break
            taken = self.queue.take(limit - len(batch), classes)
            for item in taken:
                if item.future.done():  # cancelled: the client went away or gave up
                    cancelled += 1
                elif item.deadline is not None and now >= item.deadline:
                    expired += 1
                    item.future.set_exception(
                        DeadlineExceeded("the request's deadline passed before its batch ran")
                    )
                else:
                    batch.append(item)
        waits = [now - item.enqueued_at for item in batch]
        of_class = [item.service_class for item in batch]
        if ServiceClass.BATCH in of_class:
            self._batch_class_at = now
        return batch, BatchStats(len(batch), waits, 0.0, expired, cancelled, of_class)

    def _batch_class_held_for(self) -> float:
        """Seconds batch-class inputs must still wait (0: none). Only where batches are bounded
        (a CPU: each input costs the device its full time): while interactive inputs are queued
        or on their way, and `BATCH_IDLE_S` after, except one batch every `batch_max_wait_s`."""
        if self.max_contended_batch_s is None or self._closing:
            return 0.0
        now = self.clock()
        if self.queue.depth(ServiceClass.INTERACTIVE) or (self.arriving is not None and self.arriving()):
            self._interactive_at = now
        idle_in = self._interactive_at + BATCH_IDLE_S - now
        return max(0.0, min(idle_in, self._batch_class_at + self.batch_max_wait_s - now))

    def _classes_to_take(self, bounded: bool, batch: list[WorkItem]) -> tuple[ServiceClass, ...]:
        """Which classes the batch takes next: both, interactive first; but a bounded batch that
        holds or can take interactive inputs takes no batch inputs (they would lengthen it), and
        none are taken while they are held back (`_batch_class_held_for`)."""
        if self._batch_class_held_for() > 0:
            return (ServiceClass.INTERACTIVE,) if self.queue.depth(ServiceClass.INTERACTIVE) else ()
        if not bounded:
            return CLASSES
        if self.queue.depth(ServiceClass.INTERACTIVE):
            return (ServiceClass.INTERACTIVE,)
        if any(item.service_class is ServiceClass.INTERACTIVE for item in batch):
            return ()
        return CLASSES

    async def _run(self, batch: list[WorkItem], stats: BatchStats) -> None:
        loop = asyncio.get_running_loop()
        top_k = max(item.top_k for item in batch)
        features = [item.features for item in batch]
        for item, waited in zip(batch, stats.queue_wait_s, strict=True):
            if item.tally is not None:
                item.tally.queue_s = max(item.tally.queue_s, waited)
        started = time.perf_counter()
        one_by_one = False
        try:
            outputs, computing = await loop.run_in_executor(self.executor, self._checked_run, features, top_k)
        except Exception as exc:
            outputs, computing = None, started
            if len(batch) == 1:
                _resolve(batch[0], error=exc)
            else:
                log.warning(
                    "%s: batch of %d failed (%s); retrying its inputs one by one", self.name, len(batch), exc
                )
                one_by_one = True
                await self._run_one_by_one(batch, failed_s=time.perf_counter() - started)
        finally:
            self.in_flight -= len(batch)
        ended = time.perf_counter()
        stats.forward_s = ended - max(computing, min(self._device_free_at, ended))  # its own device time
        self._device_free_at = max(self._device_free_at, ended)
        self.rate.observe(len(batch), ended - computing)
        self.served.observe(len(batch), stats.forward_s)
        if not one_by_one:  # charged before resolving: the request reads its tally once woken
            _charge(batch, stats.forward_s / len(batch))
        if outputs is not None:
            for item, output in zip(batch, outputs, strict=True):
                _resolve(item, output=output)
        if self.on_batch:
            self.on_batch(stats)

    async def _run_one_by_one(self, batch: list[WorkItem], *, failed_s: float) -> None:
        """Each input alone; each is charged its share of the failed batch plus its own run."""
        loop = asyncio.get_running_loop()
        for item in batch:
            if item.future.done():
                continue
            computing = time.perf_counter()
            output: Any = None
            error: Exception | None = None
            try:
                outputs, computing = await loop.run_in_executor(
                    self.executor, self._checked_run, [item.features], item.top_k
                )
                output = outputs[0]
            except Exception as exc:
                error = exc
            _charge([item], failed_s / len(batch) + time.perf_counter() - computing)
            _resolve(item, output=output, error=error)

    def _checked_run(self, features: list[Any], top_k: int) -> tuple[Sequence[Any], float]:
        """The batch's outputs, and when it started computing."""
        called = time.perf_counter()
        outputs = self.run_batch(features, top_k)
        if len(outputs) != len(features):
            raise RuntimeError(f"{self.name}: {len(outputs)} outputs for {len(features)} inputs")
        return outputs, self.computing_since(called)


def _charge(items: list[WorkItem], seconds_each: float) -> None:
    for item in items:
        if item.tally is not None:
            item.tally.compute_s += seconds_each


def _resolve(item: WorkItem, *, output: Any = None, error: BaseException | None = None) -> None:
    if item.future.done():  # cancelled while on the device: nobody is waiting
        return
    if error is not None:
        item.future.set_exception(error)
    else:
        item.future.set_result(output)
