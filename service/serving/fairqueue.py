"""A model replica's queue: weighted fair queueing between tenants, in two service classes.

Start-time fair queueing (Goyal et al., 1996): each input gets a start tag when it is queued,
`max(virtual time, the tenant's last finish tag)`, and its tenant's finish tag moves on by
`1 / weight`. A batch takes the smallest start tags first, and the virtual time becomes the tag
of the last input taken. So under contention a tenant of weight 3 gets three inputs of a batch
for every one of a tenant of weight 1, whatever the order they arrived in; an idle tenant
banks no credit (it restarts at the virtual time); inputs of one tenant stay in their order.

Classes: `interactive` inputs are taken first; `batch` inputs only fill the room they leave.
With `fair=False` every input's tag is the same: first in, first out within each class.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, Protocol, TypeVar


class ServiceClass(StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


CLASSES = (ServiceClass.INTERACTIVE, ServiceClass.BATCH)  # in the order a batch is filled


@dataclass(frozen=True)
class Share:
    """Whose inputs these are, for the queue: the tenant, its weight, the request's class."""

    tenant: str = ""
    weight: float = 1.0
    service_class: ServiceClass = ServiceClass.INTERACTIVE


ANYONE = Share()  # no tenant: one shared sub-queue, interactive


def parse_service_class(header: str | None) -> ServiceClass:
    """The X-Service-Class header's class (absent: interactive); ValueError names the choices."""
    if header is None:
        return ServiceClass.INTERACTIVE
    try:
        return ServiceClass(header.strip().lower())
    except ValueError:
        choices = ", ".join(c.value for c in CLASSES)
        raise ValueError(f"X-Service-Class must be one of {choices}; got {header[:40]!r}") from None


class Queued(Protocol):
    """What the queue needs of an item: whose it is, its class and weight, when it came."""

    tenant: str
    weight: float
    service_class: ServiceClass
    enqueued_at: float


Item = TypeVar("Item", bound=Queued)


@dataclass
class _ClassQueue(Generic[Item]):
    heap: list[tuple[float, int, Item]] = field(default_factory=list)
    virtual_time: float = 0.0
    finish: dict[str, float] = field(default_factory=dict)  # each tenant's last finish tag


@dataclass
class FairQueue(Generic[Item]):
    """Items of many tenants, taken by weight (see the module)."""

    fair: bool = True
    _classes: dict[ServiceClass, _ClassQueue[Item]] = field(
        default_factory=lambda: {c: _ClassQueue() for c in CLASSES}
    )
    _order: itertools.count[int] = field(default_factory=itertools.count)
    _tenants: Counter[str] = field(default_factory=Counter)  # items waiting, per tenant
    _depth: Counter[ServiceClass] = field(default_factory=Counter)
    _arrivals: deque[tuple[int, float]] = field(default_factory=deque)  # (order, enqueued_at)
    _taken: set[int] = field(default_factory=set)  # orders taken but still in `_arrivals`

    def __len__(self) -> int:
        return sum(len(q.heap) for q in self._classes.values())

    def __bool__(self) -> bool:
        return any(q.heap for q in self._classes.values())

    def append(self, item: Item) -> None:
        queue = self._classes[item.service_class]
        start = 0.0
        if self.fair:
            start = max(queue.virtual_time, queue.finish.get(item.tenant, 0.0))
            queue.finish[item.tenant] = start + 1.0 / item.weight
        order = next(self._order)
        heapq.heappush(queue.heap, (start, order, item))
        self._arrivals.append((order, item.enqueued_at))
        self._tenants[item.tenant] += 1
        self._depth[item.service_class] += 1

    def take(self, count: int, classes: tuple[ServiceClass, ...] = CLASSES) -> list[Item]:
        """Up to `count` items of `classes`: interactive ones by their start tags, then batch ones."""
        taken: list[Item] = []
        for service_class in classes:
            queue = self._classes[service_class]
            while queue.heap and len(taken) < count:
                start, order, item = heapq.heappop(queue.heap)
                self._taken.add(order)
                queue.virtual_time = start
                taken.append(item)
                self._tenants[item.tenant] -= 1
                if not self._tenants[item.tenant]:
                    del self._tenants[item.tenant]
                self._depth[service_class] -= 1
            self._forget_idle(queue)
        self._drop_taken_arrivals()
        return taken

    def oldest_enqueued_at(self) -> float:
        """When the longest-waiting item came (what a batch's deadline counts from)."""
        return self._arrivals[0][1]

    def _drop_taken_arrivals(self) -> None:
        while self._arrivals and self._arrivals[0][0] in self._taken:
            self._taken.discard(self._arrivals.popleft()[0])

    def waiting(self, tenant: str) -> int:
        """Items of `tenant` waiting (what its own bound limits)."""
        return self._tenants.get(tenant, 0)

    def depth(self, service_class: ServiceClass) -> int:
        return self._depth[service_class]

    def shared(self) -> bool:
        """Whether items of more than one tenant, or of both classes, are waiting."""
        return len(self._tenants) > 1 or all(self._depth[c] for c in CLASSES)

    def _forget_idle(self, queue: _ClassQueue[Item]) -> None:
        """Drop finish tags no later than the virtual time of tenants with nothing waiting: they
        would restart at the virtual time anyway (keeps the map as small as the active tenants).
        An emptied queue ends a busy period: everyone starts level again."""
        if not queue.heap:
            queue.virtual_time = max(queue.finish.values(), default=queue.virtual_time)
            queue.finish.clear()
            return
        if len(queue.finish) <= 2 * len(self._tenants) + 64:
            return
        queue.finish = {t: f for t, f in queue.finish.items() if f > queue.virtual_time or t in self._tenants}
