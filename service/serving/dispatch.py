"""The model router: a request's inputs -> the least-loaded replica's batcher, with backpressure
(a bounded queue per model, 503 + Retry-After from the measured service rate) and deadlines
(504 when the deadline passes before the batch runs)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from service.errors import DeadlineExceeded, ModelUnavailable, Overloaded
from service.serving.batching import Batcher, Tally
from service.serving.fairqueue import ANYONE, Share
from service.serving.registry import ModelEntry
from service.serving.runtime import Output

MAX_RETRY_AFTER_S = 60


def retry_after_s(queued: int, batchers: list[Batcher]) -> int:
    """Seconds until the queue should have room, from the replicas' measured service rate."""
    rate = sum(b.served.inputs_per_s or 0.0 for b in batchers)
    if rate <= 0:
        return 1
    return max(1, min(MAX_RETRY_AFTER_S, math.ceil(queued / rate)))


def pick_replica(entry: ModelEntry) -> Batcher:
    """The least-loaded replica (queued + running inputs); 503 while the model unloads."""
    open_ = [b for b in entry.batchers if b.accepting]
    if not open_:
        raise ModelUnavailable(f"model {entry.name!r} is being unloaded; retry later")
    return min(open_, key=lambda b: b.load)


async def infer(
    entry: ModelEntry,
    features: list[Any],
    *,
    top_k: int,
    max_queue: int,
    deadline: float | None,
    tally: Tally | None = None,
    share: Share = ANYONE,
    max_tenant_queue: int | None = None,
) -> list[Output]:
    """Queue `features` (one request's inputs) on one replica and wait for their outputs.

    `deadline` is on the batchers' clock (time.monotonic). If the caller is cancelled (client
    gone), the inputs still queued are dropped before they reach the device. `tally` collects
    the request's compute and queue time for metering. `share` places the inputs in the fair
    queue; `max_tenant_queue` bounds the inputs one tenant may have waiting (its own 503), while
    `max_queue` bounds the model as a whole.
    """
    batchers = entry.batchers
    queued = sum(b.load for b in batchers)
    if queued + len(features) > max_queue:
        raise Overloaded(
            f"model {entry.name!r} has {queued} inputs queued (limit {max_queue}); retry later",
            retry_after_s=retry_after_s(queued, batchers),
        )
    if max_tenant_queue is not None:
        waiting = sum(b.queue.waiting(share.tenant) for b in batchers)
        if waiting + len(features) > max_tenant_queue:
            raise Overloaded(
                f"this tenant has {waiting} inputs queued for model {entry.name!r} "
                f"(limit {max_tenant_queue} a tenant); retry later",
                retry_after_s=retry_after_s(waiting, batchers),
            )
    batcher = pick_replica(entry)
    # read before waiting: a model unloaded or deleted meanwhile answers what was queued, then has no replicas
    adapter = entry.adapter
    ranked = adapter.output_key == "predictions"  # a batch ranks to its largest top_k
    futures = [
        batcher.submit(
            adapter.queued(f),
            top_k=top_k,
            deadline=deadline,
            tally=tally,
            tenant=share.tenant,
            weight=share.weight,
            service_class=share.service_class,
        )
        for f in features
    ]
    timeout = None if deadline is None else max(0.0, deadline - batcher.clock())
    try:
        with entry.inputs_in_flight(len(futures)):
            async with asyncio.timeout(timeout):
                # one input (most requests): its future itself, without a gathering one around it
                outputs = await asyncio.gather(*futures) if len(futures) > 1 else [await futures[0]]
    except TimeoutError:
        raise DeadlineExceeded(
            f"no answer within the request's deadline ({len(features)} input(s) for {entry.name!r})"
        ) from None
    finally:
        for future in futures:
            future.cancel()  # no-op for resolved ones; queued ones are skipped by the batcher
    return [o[:top_k] if ranked else o for o in outputs]
