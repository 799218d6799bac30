"""LoRA fine-tunes served as adapters over their base model's replicas, not as merged copies.

A LoRA fine-tune (`ModelEntry.adapts` names its base) is attached to every replica of its loaded
base: its weights join that replica's `LoraHost` (service/serving/runtime/lora_views.py) and its
own replicas share the base replica's device, thread and batcher, so requests for the base and
for any of its adapters share forward passes, each row run with its own adapter and head. The
fine-tune keeps its own name, owner, price and metering; only the device work is shared.

Residency rules (what unloading or evicting must respect): an adapter is dropped only once its
queued and running inputs are answered (`detach`); a base is released only after its adapters
are detached (`detach_all`), and `in_use` says whether any of them has inputs in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from service.errors import ModelUnavailable
from service.observability.metrics import Metrics
from service.serving.entries import ModelEntry, Replica
from service.serving.residency import LOADABLE
from service.serving.runtime.lora_views import LoraHost, can_host, view_of
from service.serving.runtime.multi_lora import LoraWeights, UnsupportedAdapter, read_lora
from service.serving.status import ModelStatus

log = logging.getLogger(__name__)
T = TypeVar("T")


async def _on_thread(replica: Replica, work: Callable[[], T]) -> T:
    """Run `work` on the replica's own thread: between its batches, never during one."""
    return await asyncio.get_running_loop().run_in_executor(replica.executor, work)


def _host(replica: Replica, weights: LoraWeights) -> LoraHost:
    """The replica's LoRA host, made on first use (on the replica's thread)."""
    if replica.lora is None:
        if not can_host(replica.adapter):
            raise UnsupportedAdapter(f"a {type(replica.adapter).__name__} cannot serve LoRA adapters")
        replica.lora = LoraHost(replica.adapter, weights.head_path)  # type: ignore[arg-type]
    return replica.lora


async def serve_over(entry: ModelEntry, base: ModelEntry, metrics: Metrics) -> bool:
    """Load the LoRA fine-tune `entry` as an adapter over its resident `base` unless it is loaded:
    whether it is served so (False: the caller loads it, merged, or says why it cannot be)."""
    async with entry.load_lock:
        if entry.served_over is not None:
            return entry.status is ModelStatus.READY
        if entry.replicas or entry.load_task is not None or entry.status not in LOADABLE:
            return False
        before = ModelStatus.NOT_LOADED if entry.status is ModelStatus.LOADING else entry.status
        reason, started = entry.reason, time.perf_counter()
        entry.status, entry.reason = ModelStatus.LOADING, None
        try:
            attached = await attach(entry, base)
        except ModelUnavailable:
            entry.status, entry.reason = before, reason  # tried again with its base
            raise
        except Exception as exc:  # unreadable adapter files: listed, with the reason
            entry.status, entry.reason = ModelStatus.UNAVAILABLE, f"{type(exc).__name__}: {exc}"
            log.warning("model %s unavailable: %s", entry.name, entry.reason)
            raise ModelUnavailable(f"model {entry.name!r} is unavailable: {entry.reason}") from exc
        if not attached:
            entry.status, entry.reason = before, reason
            return False
        entry.load_seconds = time.perf_counter() - started
        metrics.loaded(entry.name, entry.owner, entry.load_seconds)
        return True


async def attach(entry: ModelEntry, base: ModelEntry) -> bool:
    """Serve the LoRA fine-tune `entry` over each replica of its loaded `base` (its status READY
    on success). False, with nothing changed, when this adapter or base cannot be served so (the
    caller then loads a merged copy); ModelUnavailable when the base is not loaded; other errors
    when the adapter's files cannot be read."""
    assert entry.manifest is not None
    async with base.load_lock:  # the base is not unloaded meanwhile
        if base.status is not ModelStatus.READY or not base.batchers:
            raise ModelUnavailable(
                f"model {entry.name!r} is unavailable: its base {base.name!r} is not loaded"
            )
        try:
            weights = await asyncio.to_thread(read_lora, Path(entry.manifest.source))
        except UnsupportedAdapter as exc:
            log.info("model %s: served as a merged copy (%s)", entry.name, exc)
            return False
        views: list[Replica] = []
        try:
            for replica in base.replicas:
                view = await _on_thread(replica, functools.partial(_add, replica, entry.name, weights))
                views.append(
                    Replica(
                        view, replica.device, replica.executor, replica.batcher, replica.pipeline, shared=True
                    )
                )
        except Exception as exc:  # none of it stays resident
            for replica in base.replicas:
                await _on_thread(replica, functools.partial(_remove, replica, entry.name))
            if not isinstance(exc, UnsupportedAdapter):
                raise
            log.info("model %s: served as a merged copy (%s)", entry.name, exc)
            return False
        entry.replicas, entry.memory_bytes = views, weights.nbytes  # counted on each device's budget
        base.adapters[entry.name], entry.served_over = entry, base
        entry.status, entry.reason = ModelStatus.READY, None
    log.info(
        "model %s: LoRA adapter (%d kB) served over %s on %s",
        entry.name,
        weights.nbytes // 1024,
        base.name,
        ", ".join(str(r.device) for r in views),
    )
    return True


def _add(replica: Replica, name: str, weights: LoraWeights) -> Any:
    host = _host(replica, weights)
    host.add(name, weights)
    view = view_of(host, name)
    view.warmup()
    return view


def _remove(replica: Replica, name: str) -> None:
    if replica.lora is not None:
        replica.lora.remove(name)


async def detach(entry: ModelEntry) -> None:
    """Stop serving the LoRA fine-tune `entry` over its base: no new inputs, the queued ones
    answered, then its weights dropped from every replica of the base."""
    base, entry.served_over = entry.served_over, None
    entry.replicas, entry.status = [], ModelStatus.NOT_LOADED  # new requests: 503, or a fresh load
    if base is None:
        return
    if base.adapters.get(entry.name) is entry:
        del base.adapters[entry.name]
    await entry.until_idle()
    for replica in base.replicas:
        with contextlib.suppress(RuntimeError):  # the base released meanwhile: its thread is gone
            await _on_thread(replica, functools.partial(_remove, replica, entry.name))


async def detach_all(base: ModelEntry) -> None:
    """Detach every LoRA fine-tune served over `base` (they load again, with it, when next used)."""
    for entry in list(base.adapters.values()):
        await detach(entry)


def in_use(base: ModelEntry) -> bool:
    """Whether any LoRA fine-tune served over `base` is used (held, arriving, queued or running)."""
    return base.adapters_in_use


def resident_bytes(base: ModelEntry) -> int:
    """The memory the LoRA adapters resident over `base` hold, all replicas together."""
    return sum(r.lora.model.nbytes for r in base.replicas if r.lora is not None)
