"""The model process's end: it holds every model (once per device), their batchers, the job
runners, and answers the front-end workers' calls (wire.py).

Each connection is one worker. A call runs as its own task, so a slow model does not hold up
another's calls; a `Cancel` cancels that task (its queued inputs are dropped before the device);
a worker that goes away has all its calls cancelled and its arrivals forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from prometheus_client.metrics_core import Metric

from service.engine import wire
from service.engine.metrics import merged_exposition, retire
from service.engine.mirror import ModelInfo
from service.engine.shared import ArenaReader, SharedArray
from service.errors import GatewayError
from service.serving.batching import Tally
from service.serving.entries import ModelEntry
from service.serving.fairqueue import Share
from service.serving.inputs import RawInput
from service.serving.preprocess import PreprocessPool
from service.serving.runtime.base import TaskParams

if TYPE_CHECKING:
    from service.gateway import Gateway

log = logging.getLogger(__name__)


class _Worker:
    """One worker's connection: its calls in progress and the requests it said are arriving."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.index = -1
        self.arena: str | None = None  # its shared-memory arena's name, if it has one
        self.calls: dict[int, asyncio.Task[None]] = {}
        self.arriving: dict[str, int] = {}


class EngineServer:
    """Serves the workers' calls on a Unix socket at `path`, from `gateway`'s models."""

    def __init__(self, gateway: Gateway, path: Path) -> None:
        self.gateway = gateway
        self.path = path
        self._server: asyncio.Server | None = None
        self._workers: set[_Worker] = set()
        self.arenas = ArenaReader(path.parent)
        self._families: dict[_Worker, list[Metric]] = {}  # each connected worker's last metrics
        self._retired: list[Metric] = []  # the counts of workers that went away

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for worker in list(self._workers):
            worker.writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        worker = _Worker(writer)
        self._workers.add(worker)
        try:
            while True:
                message = await wire.receive(reader)
                if isinstance(message, wire.Cancel):
                    if (task := worker.calls.get(message.id)) is not None:
                        task.cancel()
                elif isinstance(message, wire.Call) and not message.reply:
                    self._notice(worker, message)
                elif isinstance(message, wire.Call):
                    task = asyncio.create_task(self._answer(worker, message))
                    worker.calls[message.id] = task
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._workers.discard(worker)
            if (families := self._families.pop(worker, None)) is not None:
                self._retired = retire(self._retired, families)
            self.arenas.forget(worker.arena)
            for task in worker.calls.values():
                task.cancel()  # nobody is waiting for them: their queued inputs are dropped
            for name, count in worker.arriving.items():
                self._arrive(worker, name, -count)
            writer.close()

    async def _answer(self, worker: _Worker, call: wire.Call) -> None:
        try:
            value = await getattr(self, f"_{call.op}")(worker, **call.args)
            reply = wire.Reply(call.id, value)
        except asyncio.CancelledError:
            return  # the caller left (a Cancel) or went away
        except GatewayError as exc:
            reply = wire.Reply(call.id, failure=wire.Failure.of(exc))
        except Exception:
            log.exception("model process: %s failed", call.op)
            error = GatewayError("internal error in the model process; the request id identifies it")
            reply = wire.Reply(call.id, failure=wire.Failure.of(error))
        finally:
            worker.calls.pop(call.id, None)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await wire.send(worker.writer, reply)

    def _notice(self, worker: _Worker, call: wire.Call) -> None:
        if call.op == "hello":
            worker.index = int(call.args["worker"])
            worker.arena = call.args.get("arena")
        elif call.op == "arrive":
            self._arrive(worker, str(call.args["model"]), int(call.args["delta"]))
        elif call.op == "metrics":
            self._families[worker] = call.args["families"]

    def _arrive(self, worker: _Worker, name: str, delta: int) -> None:
        """A request for `name` is on its way (+1) or has arrived or failed (-1)."""
        count = worker.arriving.get(name, 0)
        delta = max(delta, -count)
        if not delta:
            return
        worker.arriving[name] = count + delta
        entry = self.gateway.registry.entries.get(name)
        if entry is None:
            return
        entry.arriving += delta
        if entry.arriving == 0:
            for batcher in entry.batchers:
                batcher.poke()

    @contextlib.contextmanager
    def _arrived(self, worker: _Worker, name: str, arrived: bool) -> Iterator[None]:
        """Ends the arrival the worker announced for this call (if it did) when the block ends."""
        try:
            yield
        finally:
            if arrived:
                self._arrive(worker, name, -1)

    async def _entry(self, name: str) -> ModelEntry:
        """The model `name`, found among fine-tunes and registrations made since this process
        last looked if it does not know it yet; 404 if it is nowhere."""
        registry = self.gateway.registry
        if name not in registry.entries and registry.finder is not None:
            await registry.finder.discover(registry, None, name)
        if name not in registry.entries:
            await self.gateway.model_sync.sync()
        return registry.get(name)

    async def _ready(self, worker: _Worker) -> bool:
        await self.gateway.registry.preload_done.wait()
        return True

    async def _model(self, worker: _Worker, name: str, deadline: float | None) -> ModelInfo:
        entry = await self.gateway.registry.ensure_loaded(await self._entry(name), deadline)
        return info_of(entry, complete=True)

    async def _statuses(self, worker: _Worker) -> dict[str, ModelInfo]:
        return {e.name: info_of(e, complete=False) for e in self.gateway.registry.list()}

    async def _infer(
        self,
        worker: _Worker,
        model: str,
        features: list[Any],
        params: TaskParams,
        top_k: int,
        deadline: float,
        share: Share,
        arrived: bool,
    ) -> wire.Outcome:
        inference, registry = self.gateway.inference, self.gateway.registry
        with contextlib.ExitStack() as held:
            with self._arrived(worker, model, arrived):  # queued (or failed) by the end of this block
                entry = await self._entry(model)
                held.enter_context(registry.residency.hold(entry))  # not evicted while the call is on it
                adapter = (await registry.ensure_loaded(entry, deadline)).adapter
                if any(isinstance(f, RawInput) for f in features):  # text, or images without a recipe
                    features = await inference.features(entry, adapter, features, deadline, share)
                else:  # read in place where the worker's arena holds them
                    features = [torch.from_numpy(self._array(f)) for f in features]
            tally = Tally()
            outputs = await inference.queue(
                entry, adapter, features, params, top_k=top_k, deadline=deadline, tally=tally, share=share
            )
        return wire.Outcome(outputs, tally.compute_s, tally.queue_s)

    def _array(self, feature: Any) -> Any:
        return self.arenas.array(feature) if isinstance(feature, SharedArray) else feature

    async def _keys_changed(self, worker: _Worker, reason: str) -> None:
        """A key or tenant changed through `worker`: this process's key cache and every other
        worker's are dropped before the answer, so the change holds on the next request anywhere."""
        self.gateway.keys.forget()
        notice = wire.Call(0, "keys_changed", {"reason": reason}, reply=False)
        for other in list(self._workers):
            if other is not worker:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await wire.send(other.writer, notice)

    async def _sync(self, worker: _Worker) -> None:
        await self.gateway.model_sync.sync()

    async def _token_counts(self, worker: _Worker, model: str, texts: list[str]) -> list[int]:
        entry = await self.gateway.registry.ensure_loaded(await self._entry(model))
        return await asyncio.to_thread(entry.adapter.token_counts, texts)

    async def _metrics(self, worker: _Worker, families: list[Metric]) -> bytes:
        """Every process's metrics as one exposition: this one's, and each worker's latest."""
        self._families[worker] = families
        own = list(self.gateway.metrics.registry.collect())
        return merged_exposition(own, [self._retired, *self._families.values()])


def info_of(entry: ModelEntry, *, complete: bool) -> ModelInfo:
    """What a worker needs to know of `entry`; `complete` adds its preprocessing recipe."""
    if not entry.replicas:
        return ModelInfo(entry.status, entry.reason, entry.load_seconds)
    adapter = entry.adapter
    return ModelInfo(
        entry.status,
        entry.reason,
        entry.load_seconds,
        devices=tuple(str(r.device) for r in entry.replicas),
        dtype=adapter.dtype,
        input_kind=entry.input_kind,
        output_key=adapter.output_key,
        reads_params=adapter.reads_params,
        num_labels=adapter.num_labels,
        embedding_size=adapter.embedding_size,
        compile_state=adapter.compile_state,
        linear_kernels=adapter.linear_kernels,
        processor=PreprocessPool.processor_of(adapter) if complete else None,
        complete=complete,
    )
