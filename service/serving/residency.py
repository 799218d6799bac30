"""Memory-aware residency: which models are resident on each device, within its memory budget.

Every device has a budget (`MAAS_DEVICE_MEMORY_MB`; by default its memory less 10 % on CUDA,
half the RAM on the CPU). A model that is not resident loads on its first use, within the
request's deadline, and every request for it meanwhile shares that one load (one whose deadline
passes answers 504; the load goes on and the model becomes ready). When a load does not fit, the
least recently used models that are ready, not pinned and idle (nothing arriving, queued or
running, no batch job) are evicted first: they become `unloaded` and load again on their next
use. Loads that must make room run one at a time per device; when nothing can be evicted the
request gets 503 naming the setting. A model's size is `estimate_bytes` (its weight files), or
what its loaded weights hold where the files are not on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from service.errors import DeadlineExceeded, ModelUnavailable
from service.observability.metrics import Metrics
from service.serving.devices import DevicePool
from service.serving.entries import ModelEntry
from service.serving.runtime.cpu_linear import model_of
from service.serving.sizing import estimate_bytes
from service.serving.status import ModelStatus

log = logging.getLogger(__name__)

MB = 2**20
CUDA_MARGIN = 0.10  # of a GPU's memory, left to the CUDA context, activations and the allocator's cache
CPU_SHARE = 0.5  # of the RAM, for one gateway process's models
EVICTED_REASON = "evicted for memory (MAAS_DEVICE_MEMORY_MB); it loads again on its next use"
NO_ROOM_AT_START = "not preloaded: MAAS_DEVICE_MEMORY_MB is taken by other models; it loads on its first use"
ATTEMPTS = 3  # loads one use starts at most (a shared load may not make room; an unload may follow)
# statuses from which a use loads the model
LOADABLE = (ModelStatus.NOT_LOADED, ModelStatus.LOADING, ModelStatus.UNLOADED)


class Models(Protocol):
    """What residency needs of the registry: its models, and loading and unloading one."""

    entries: dict[str, ModelEntry]

    def load_replicas(self, entry: ModelEntry, devices: Sequence[torch.device]) -> None:
        """Load one replica on each of `devices` (in a worker thread): `ready` or `unavailable`."""

    def start_serving(self, entry: ModelEntry) -> None:
        """Start the batchers of a model just made ready (on the event loop)."""

    async def drop_replicas(self, entry: ModelEntry, reason: str) -> None:
        """Drain and free the model's replicas; `unloaded` with `reason` (`load_lock` held)."""


def device_budgets(devices: Iterable[torch.device], memory_mb: float | None) -> dict[torch.device, int]:
    """Each device's budget in bytes: `memory_mb` MB (2**20 bytes) each, or the default."""
    if memory_mb is not None:
        return {d: int(memory_mb * MB) for d in devices}
    return {d: _default_budget(d) for d in devices}


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return int(total * (1 - CUDA_MARGIN))
    return int(_ram_bytes() * CPU_SHARE)


def _ram_bytes() -> int:
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open("/proc/meminfo", encoding="ascii") as info,
    ):
        for line in info:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def loaded_bytes(entry: ModelEntry) -> int:
    """What one loaded replica's weights hold (parameters and buffers), for a model whose weight
    files are not on disk (a hub id)."""
    if not entry.replicas:
        return 0
    module = model_of(entry.replicas[0].adapter)
    if module is None:
        return 0
    # a tensor packed for oneDNN (runtime/cpu_linear.py) has no data pointer: it counts by identity
    tensors = {id(t) if t.is_mkldnn else t.data_ptr(): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


@dataclass
class Plan:
    """Where a model's replicas go, and which models must be evicted first."""

    devices: list[torch.device]
    victims: list[ModelEntry] = field(default_factory=list)


class Residency:
    """Loads models on use within each device's budget, evicting the least recently used."""

    def __init__(
        self,
        models: Models,
        pool: DevicePool,
        metrics: Metrics,
        budgets: dict[torch.device, int],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.models = models
        self.pool = pool
        self.metrics = metrics
        self.budgets = budgets
        self.clock = clock  # deadlines and last uses are read on it; tests move it
        self._reserved: dict[torch.device, int] = {}  # what loads under way will hold
        self._room_locks = {d: asyncio.Lock() for d in pool.devices}  # loads that evict, one at a time
        self._freed = asyncio.Event()  # set (and replaced) when room may have been freed

    def resident(self) -> dict[torch.device, list[tuple[ModelEntry, int]]]:
        """Each device's resident replicas: (model, bytes)."""
        found: dict[torch.device, list[tuple[ModelEntry, int]]] = {d: [] for d in self.pool.devices}
        for entry in self.models.entries.values():
            for replica in entry.replicas:
                found.setdefault(replica.device, []).append((entry, entry.memory_bytes or 0))
        return found

    def resident_bytes(self) -> dict[str, float | None]:
        return {str(d): sum(b for _, b in held) for d, held in self.resident().items()}

    def resident_models(self) -> dict[str, float | None]:
        return {str(d): len(held) for d, held in self.resident().items()}

    def touch(self, entry: ModelEntry) -> None:
        """`entry` was used now (the least recently used is evicted first)."""
        entry.last_used = self.clock()

    async def ensure_loaded(
        self, entry: ModelEntry, deadline: float | None = None, *, make_room: bool = True
    ) -> ModelEntry:
        """`entry`, resident: loaded now if it is not (sharing a load under way); 504 when
        `deadline` passes first (the load goes on), 503 if it cannot be loaded or, with
        `make_room`, nothing can be evicted for it. Without `make_room` it loads only where it
        fits as things are (the preload)."""
        attempts = 0
        # a load under way is awaited even once `ready`: its batchers start when it ends
        while (entry.status in LOADABLE or entry.load_task is not None) and attempts < ATTEMPTS:
            freed = self._freed  # a model freed from now on is a reason to try again
            task = entry.load_task
            if task is None:
                task = entry.load_task = asyncio.create_task(
                    self._load(entry, make_room), name=f"maas-load-{entry.name}"
                )
                task.add_done_callback(lambda t: self._settled(entry, t))
            if not await self._before(deadline, task):
                raise DeadlineExceeded(
                    f"the request's deadline passed while model {entry.name!r} was loading; "
                    "it goes on loading"
                )
            try:
                task.result()  # no room: 503, for every request that shared the load
            except RoomInUse:  # the models that would make room are busy: wait until one is free
                if not await self._before(deadline, asyncio.ensure_future(freed.wait())):
                    raise DeadlineExceeded(
                        f"the request's deadline passed while model {entry.name!r} waited for room: "
                        "the models that would make room for it were in use (MAAS_DEVICE_MEMORY_MB)"
                    ) from None
                continue
            attempts += 1  # again if a shared load that would not make room left it, or it was unloaded
            if not make_room:
                break
        if entry.status is not ModelStatus.READY:
            raise ModelUnavailable(f"model {entry.name!r} is unavailable: {entry.reason}")
        self.touch(entry)
        return entry

    async def _before(self, deadline: float | None, waiting: asyncio.Future[Any]) -> bool:
        """Whether `waiting` ended before `deadline`; a `freed` wait is cancelled if not, a load
        is left to go on."""
        timeout = None if deadline is None else max(0.0, deadline - self.clock())
        try:
            done, _ = await asyncio.wait({waiting}, timeout=timeout)
        finally:
            if not isinstance(waiting, asyncio.Task):
                waiting.cancel()
        return bool(done)

    def wake(self) -> None:
        """Room may have been freed (a model unloaded or idle, a load ended): waiting loads retry."""
        self._freed.set()
        self._freed = asyncio.Event()

    @contextlib.contextmanager
    def hold(self, entry: ModelEntry) -> Iterator[None]:
        """Hold `entry` resident for a request or a batch job: it is not evicted meanwhile."""
        entry.users += 1
        try:
            yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                self.wake()

    def _settled(self, entry: ModelEntry, task: asyncio.Task[None]) -> None:
        """A load ended: the next use may start another; its error is read even if no one waited."""
        if entry.load_task is task:
            entry.load_task = None
        if not task.cancelled():
            task.exception()

    async def _load(self, entry: ModelEntry, make_room: bool) -> None:
        async with entry.load_lock:
            if entry.replicas or entry.status not in LOADABLE or entry.manifest is None:
                return
            before = ModelStatus.NOT_LOADED if entry.status is ModelStatus.LOADING else entry.status
            reason = entry.reason
            entry.status, entry.reason = ModelStatus.LOADING, None
            try:
                need = await asyncio.to_thread(estimate_bytes, entry.manifest, entry.manifest_path.parent)
                if need is None:
                    need = entry.memory_bytes  # measured when it was loaded before
                async with self._room(entry, need or 0, make_room) as devices:
                    if devices is None:
                        entry.status, entry.reason = before, NO_ROOM_AT_START
                        return
                    await asyncio.to_thread(self.models.load_replicas, entry, devices)
                    if entry.status is ModelStatus.READY:  # counted before its room is given back
                        entry.memory_bytes = need if need is not None else loaded_bytes(entry)
            except BaseException:
                if entry.status is ModelStatus.LOADING:
                    entry.status, entry.reason = before, reason
                raise
            if entry.status is ModelStatus.READY:
                self.models.start_serving(entry)
                self.touch(entry)

    @contextlib.asynccontextmanager
    async def _room(
        self, entry: ModelEntry, need: int, make_room: bool
    ) -> AsyncIterator[list[torch.device] | None]:
        """Room for `entry`'s replicas of `need` bytes each, kept for it while the body loads them:
        the devices, once what must be evicted is; None when it does not fit and `make_room` is off."""
        assert entry.manifest is not None
        async with contextlib.AsyncExitStack() as held:
            locks = contextlib.AsyncExitStack()
            held.push_async_callback(lambda: locks.aclose())
            locked: set[torch.device] = set()
            while True:
                plan = self._plan(entry.manifest.replicas, need)
                if plan is not None and not plan.victims:
                    break
                if not make_room:
                    yield None
                    return
                if plan is None:
                    raise self._no_room(entry, need)  # RoomInUse where models in use hold it
                wanted = {v.device for victim in plan.victims for v in victim.replicas} | set(plan.devices)
                if wanted <= locked:
                    break
                # the devices' locks, all taken again in one order, so that no two loads deadlock
                await locks.aclose()
                locked = wanted | locked
                for device in sorted(locked, key=str):
                    await locks.enter_async_context(self._room_locks[device])
            # the victims are chosen and the room kept without a pause, so no other load takes it
            victims = [v for v in plan.victims if await _locked(v)]
            for victim in victims:
                held.push_async_callback(_unlock, victim)
                victim.status, victim.reason = ModelStatus.UNLOADED, EVICTED_REASON  # a use now waits
            for device in plan.devices:
                self._reserved[device] = self._reserved.get(device, 0) + need
            held.callback(self._release_reserved, plan.devices, need)
            for victim in victims:
                log.info("model %s evicted for memory: %s is loading", victim.name, entry.name)
                self.metrics.evicted(victim.name, victim.owner)
                await self.models.drop_replicas(victim, EVICTED_REASON)
            yield plan.devices

    def _release_reserved(self, devices: list[torch.device], need: int) -> None:
        for device in devices:
            self._reserved[device] -= need
        self.wake()  # a load ended: the model it made is idle (evictable), or its room is free

    def _plan(self, replicas: int, need: int) -> Plan | None:
        """Where `replicas` copies of `need` bytes fit: as things are, else after evicting the least
        recently used idle models (only those on the devices chosen); None if nothing makes room."""
        resident = self.resident()
        room = {
            d: self.budgets.get(d, 0) - sum(b for _, b in resident.get(d, [])) - self._reserved.get(d, 0)
            for d in self.pool.devices
        }
        devices = self._place(replicas, need, room)
        if devices is not None:
            return Plan(devices)
        victims: list[ModelEntry] = []
        for victim in sorted(self._evictable(), key=lambda e: e.last_used):
            victims.append(victim)
            for replica in victim.replicas:
                room[replica.device] += victim.memory_bytes or 0
            devices = self._place(replicas, need, room)
            if devices is not None:
                chosen = set(devices)
                useful = [v for v in victims if any(r.device in chosen for r in v.replicas)]
                return Plan(devices, useful)
        return None

    def _place(self, replicas: int, need: int, room: dict[torch.device, int]) -> list[torch.device] | None:
        try:
            return self.pool.place(replicas, need, room=room)
        except ValueError:
            return None

    def _evictable(self) -> list[ModelEntry]:
        """Ready models no one uses: not pinned, nothing arriving, queued or running (for them or
        their LoRA fine-tunes), no batch job on them, not being loaded or unloaded."""
        return [
            e
            for e in self.models.entries.values()
            if e.status is ModelStatus.READY
            and e.replicas
            and not e.pinned
            and e.users == 0
            and e.arriving == 0
            and not any(b.load for b in e.batchers)
            and not e.adapters_in_use  # a base whose LoRA fine-tunes are used
            and not e.load_lock.locked()
        ]

    def _no_room(self, entry: ModelEntry, need: int) -> Exception:
        """What to do when nothing can be evicted now: wait (`RoomInUse`) where models in use or
        loading would make room once idle; else 503 (pinned models, or a budget too small)."""
        pinned = {d: self.budgets.get(d, 0) for d in self.pool.devices}
        for device, held in self.resident().items():
            pinned[device] = pinned.get(device, 0) - sum(b for e, b in held if e.pinned)
        assert entry.manifest is not None
        if self._place(entry.manifest.replicas, need, pinned) is not None:
            return RoomInUse()
        budget = ", ".join(f"{d}: {self.budgets.get(d, 0) / MB:.2f} MB" for d in self.pool.devices)
        return ModelUnavailable(
            f"model {entry.name!r} needs {need / MB:.2f} MB a replica, more than the memory budget "
            f"leaves beside the pinned models; MAAS_DEVICE_MEMORY_MB is {budget}"
        )


class RoomInUse(Exception):
    """Only models in use (or loading) would make room: the load waits until one is free."""


async def _locked(entry: ModelEntry) -> bool:
    """Take `entry`'s load lock, which is free (a free asyncio lock is taken without a pause)."""
    await entry.load_lock.acquire()
    return True


async def _unlock(entry: ModelEntry) -> None:
    entry.load_lock.release()
