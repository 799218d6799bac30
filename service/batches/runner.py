"""The batch runner: claims batch jobs from the database, one at a time per replica, and feeds
their inputs through the model's own batcher in the `batch` service class, so that they only
fill the room interactive inputs leave in a batch.

At most `batch_in_flight` inputs of a job are queued at once, and its results are written in
input order: a line is appended once it and every line before it are done. Every
`batch_in_flight` lines, and at least every second while it runs (also while its inputs wait
for the device), the file is flushed and the progress (counts, bytes of the results file)
committed with the job's lease; a gateway that stops hands the lease back, one that dies loses it
after `batch_lease_s`, and the next runner cuts the file back to the committed progress and goes
on from there.

Metering: a job is one usage event (kind `batch`, keyed by the job id), written in the
transaction that ends it: its answered inputs at the model's batch price (cancelled jobs too, for
what they processed); a job that failed as a whole is recorded at no charge. The same answered
inputs then count against the tenant's monthly quota, where it has one (a job is refused at
creation once the quota is spent; one that started runs to its end). Rate limits do not apply:
a job runs on the capacity interactive requests leave.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from service.batches.inputs import BatchItem, read_batch_inputs
from service.batches.store import BatchStore
from service.db.leases import ClaimLoop, heartbeat_every
from service.db.models import BatchJob
from service.errors import GatewayError, Overloaded
from service.metering import Meter
from service.serving.admission import PreprocessGate
from service.serving.batching import Tally
from service.serving.fairqueue import ServiceClass, Share
from service.serving.inference import check_params, encode_output, infer_features
from service.serving.inputs import InputLimits, check_inputs
from service.serving.preprocess import PreprocessPool, prepare_features
from service.serving.registry import ModelEntry, ModelFinder, ModelRegistry
from service.serving.runtime.base import TaskParams
from service.settings import Settings
from service.tenancy.quota import Quota
from service.training.datasets import DatasetLimits
from service.training.store import FineTuneStore

log = logging.getLogger(__name__)

TOP_K = 5  # classes per input in the results, as predict's default
NO_DEADLINE_S = 24 * 3600.0  # a batch input waits for idle capacity as long as it takes


class BatchRunner(ClaimLoop[BatchJob]):
    """Runs batch jobs from the database through the registry's batchers, one job at a time."""

    def __init__(
        self,
        store: BatchStore,
        files: FineTuneStore,
        registry: ModelRegistry,
        settings: Settings,
        *,
        preprocess: PreprocessPool | None = None,
        gate: PreprocessGate | None = None,
        finder: ModelFinder | None = None,
        meter: Meter | None = None,
        quota: Quota | None = None,
    ) -> None:
        self.store = store
        self.files = files
        self.registry = registry
        self.settings = settings
        self.preprocess = preprocess
        self.gate = gate  # the process's admission to decoding: a job's inputs go in class batch
        self.finder = finder  # models fine-tuned on other replicas
        self.meter = meter  # None: not metered (tests of the runner alone)
        self.quota = quota  # a job's answered inputs count against its tenant's monthly quota
        self.limits = InputLimits.of(settings)
        self.dataset_limits = DatasetLimits.of(settings)
        # called on the event loop after each committed progress: (job id, lines written)
        self.progress_listeners: list[Callable[[str, int], None]] = []
        super().__init__("maas-batch-runner")
        self._cancelled: set[str] = set()
        # batch inputs are decoded a few at a time, so that they never crowd interactive requests
        # out of the CPU and the worker threads (decoding holds the GIL much of its time)
        self._lanes = asyncio.Semaphore(settings.batch_preprocess_lanes)

    def cancel(self, job_id: str) -> None:
        """Stop a job this replica runs at its next heartbeat (others learn of it on theirs)."""
        if self._event_loop is not None:
            self._event_loop.call_soon_threadsafe(self._cancelled.add, job_id)

    def halt(self) -> None:
        """Stop taking inputs: the running job commits its progress and hands its lease back."""
        self._stopping = True
        self._wake.set()

    async def stop(self) -> None:
        """`halt`, and wait until the runner has ended."""
        self.halt()
        await self._ended()

    def _claim(self) -> BatchJob | None:
        return self.store.claim(self.owner, self.settings.batch_lease_s)

    async def _run(self, job: BatchJob) -> None:
        log.info(
            "batch %s: claimed by %s at input %d of %d",
            job.id,
            self.owner,
            job.completed + job.failed,
            job.total,
        )
        try:
            entry = await self._model(job)
            with self.registry.residency.hold(entry):  # not evicted for memory while the job runs
                progress = await self._process(job, entry)
            outcome = progress.pop("outcome")
            if outcome == "stopping":
                await asyncio.to_thread(self.store.release, job.id, self.owner)
            elif outcome == "lost":
                log.warning("batch %s: lease lost to another replica; stopped here", job.id)
            else:
                await self._finish(job, "cancelled" if outcome == "cancelled" else "completed", **progress)
        except Exception as exc:
            log.exception("batch %s failed", job.id)
            message = (exc.message if isinstance(exc, GatewayError) else str(exc)) or type(exc).__name__
            await self._finish(job, "failed", error=message[:2000])
        finally:
            self._cancelled.discard(job.id)

    async def _model(self, job: BatchJob) -> ModelEntry:
        if self.finder is not None:
            await self.finder.discover(self.registry, job.tenant_id, job.model)
        entry = await self.registry.ensure_loaded(self.registry.get(job.model))
        check_params(entry.adapter, TaskParams())  # a zero-shot model needs labels no batch file has
        return entry

    async def _finish(self, job: BatchJob, status: str, **values: Any) -> None:
        """End the job with its usage event (what it answered; free when it failed as a whole)."""
        current = await asyncio.to_thread(self.store.get, None, job.id)
        completed = values.get("completed", current.completed)
        usage = None
        if self.meter is not None and self.meter.enabled:
            usage = self.meter.batch_usage(
                job_id=job.id,
                tenant_id=job.tenant_id,
                key_id=job.key_id or "",
                model=job.model,
                inputs=completed,
                compute_us=values.get("compute_us", current.compute_us),
                billed=status != "failed",
            )
        ended = await asyncio.to_thread(self.store.finish, job.id, self.owner, status, usage=usage, **values)
        if not ended:
            log.warning("batch %s: no longer this runner's; another replica ends it", job.id)
            return
        if usage is not None and self.meter is not None:
            self.meter.counted(usage)
        if self.quota is not None and status != "failed" and completed:
            await asyncio.to_thread(self.quota.charge, job.tenant_id, completed, only_if_limited=True)

    async def _process(self, job: BatchJob, entry: ModelEntry) -> dict[str, Any]:
        """Run the job's inputs from its committed progress on; its progress and how it stopped
        (`outcome`: done, cancelled, stopping or lost)."""
        input_file = await asyncio.to_thread(self.files.get_file, job.tenant_id, job.input_file)
        path = self.store.results_path(job.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as out:
            out.truncate(job.results_bytes)  # lines past the committed progress are redone
        weight = await asyncio.to_thread(self.store.weight, job.tenant_id)
        share = Share(job.tenant_id, weight, ServiceClass.BATCH)
        tally = Tally()
        start = job.completed + job.failed
        progress: dict[str, Any] = {
            "completed": job.completed,
            "failed": job.failed,
            "results_bytes": job.results_bytes,
            "compute_us": job.compute_us,
        }
        items: Iterator[BatchItem] = read_batch_inputs(
            self.files.file_path(input_file),
            input_file.summary.get("format", "zip"),
            entry.input_kind,
            self.dataset_limits,
            start,
        )
        in_flight = self.settings.batch_in_flight
        every = heartbeat_every(self.settings.batch_lease_s)
        pending: deque[asyncio.Task[tuple[bytes, bool]]] = deque()
        exhausted, unsaved, saved_at, outcome = False, 0, time.monotonic(), "done"
        try:
            with path.open("ab") as out:
                while True:
                    while not exhausted and len(pending) < in_flight and not self._stopping:
                        item = await asyncio.to_thread(next, items, None)
                        if item is None:
                            exhausted = True
                        else:
                            pending.append(asyncio.create_task(self._line(entry, share, item, tally)))
                    if not pending:
                        break
                    # the next line, or the heartbeat's time: a job whose inputs are held back
                    # (interactive load, a slow model) keeps its lease while it waits
                    await asyncio.wait({pending[0]}, timeout=max(0.0, saved_at + every - time.monotonic()))
                    if pending[0].done():
                        line, answered = pending.popleft().result()
                        out.write(line)
                        progress["results_bytes"] += len(line)
                        progress["completed" if answered else "failed"] += 1
                        unsaved += 1
                        if unsaved < in_flight and pending and time.monotonic() - saved_at < every:
                            continue
                    if unsaved:
                        out.flush()
                        os.fsync(out.fileno())
                    progress["compute_us"] = job.compute_us + round(tally.compute_s * 1_000_000)
                    state = await asyncio.to_thread(
                        self.store.heartbeat, job.id, self.owner, self.settings.batch_lease_s, **progress
                    )
                    if unsaved:
                        written = progress["completed"] + progress["failed"]
                        for listener in self.progress_listeners:
                            listener(job.id, written)
                    unsaved, saved_at = 0, time.monotonic()
                    if job.id in self._cancelled:
                        state = "cancelled"
                    if state != "ok" or self._stopping:
                        outcome = state if state != "ok" else "stopping"
                        break
        finally:
            for task in pending:
                task.cancel()  # their queued inputs are dropped before the device
            await asyncio.gather(*pending, return_exceptions=True)
        if outcome == "done" and self._stopping and progress["completed"] + progress["failed"] < job.total:
            outcome = "stopping"
        return {"outcome": outcome, **progress}

    async def _line(
        self, entry: ModelEntry, share: Share, item: BatchItem, tally: Tally
    ) -> tuple[bytes, bool]:
        """One input's results line, and whether it was answered (else it holds the input's error)."""
        line: dict[str, Any] = {"index": item.index}
        if item.entry is not None:
            line["input"] = item.entry
        try:
            if item.error is not None:
                raise item.error
            assert item.raw is not None
            output = await self._infer(entry, share, check_inputs([item.raw], self.limits), tally)
            line[entry.adapter.output_key] = encode_output(output)
            answered = True
        except GatewayError as error:
            line["error"] = {"type": error.error_type, "message": error.message}
            answered = False
        return orjson.dumps(line) + b"\n", answered

    async def _infer(self, entry: ModelEntry, share: Share, raw: list[Any], tally: Tally) -> Any:
        deadline = time.monotonic() + NO_DEADLINE_S
        async with self._lanes:
            features, _ = await prepare_features(
                self.preprocess,
                entry.adapter,
                entry.input_kind,
                raw,
                self.limits.image,
                deadline,
                gate=self.gate,
                share=share,
            )
        while True:
            try:
                [output] = await infer_features(
                    entry,
                    entry.adapter,
                    features,
                    TaskParams(),
                    top_k=TOP_K,
                    deadline=None,
                    tally=tally,
                    share=share,
                    tenant_bound=False,  # at most batch_in_flight of a job's inputs wait at once
                )
                return output
            except Overloaded as full:  # the model's queue is full of interactive inputs: wait
                await asyncio.sleep(float(full.headers.get("Retry-After", "1")))
