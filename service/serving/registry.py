"""The model registry: manifests -> models with a status, loaded onto the device pool.

Every manifest file becomes a listed model. One that cannot be parsed or loaded stays listed
as `unavailable` with the reason; the gateway starts regardless. Models marked `preload`
load at start-up (in the background: `/readyz` says when they are done) where their device's
memory budget has room; the others load on their first request. What is resident, and what is
evicted for what, is `residency.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import torch

from service import heap
from service.errors import ModelUnavailable, NotFound
from service.observability.metrics import Metrics
from service.serving import lora
from service.serving.batching import BATCH_MAX_WAIT_S, Batcher
from service.serving.devices import (
    DevicePool,
    computing_since,
    cpu_lanes,
    dtype_name,
    intra_op_threads,
    one_thread,
    release_cached_memory,
    resolve_dtype,
)
from service.serving.entries import INPUT_KIND, ModelEntry, Replica
from service.serving.manifests import Batching, ManifestFile, ModelManifest, Price, discover_manifests
from service.serving.residency import Residency, device_budgets
from service.serving.runtime import SourceError, load_adapter
from service.serving.runtime.cpu_linear import CpuLinear
from service.serving.runtime.sources import resolve_local_folder
from service.serving.status import ModelStatus
from service.tenancy.principal import Principal

log = logging.getLogger(__name__)

__all__ = ["INPUT_KIND", "ModelEntry", "ModelFinder", "ModelRegistry", "ModelStatus", "Replica"]
UNLOADED_REASON = (
    "unloaded by an admin; it loads again on its next use, or POST /v1/admin/models/{model}/load"
)


class ModelFinder(Protocol):
    """Registers models made while the gateway runs (fine-tunes other replicas finished) that
    `registry` does not know yet: the tenant's (None: all), or only the one named `model`."""

    async def discover(self, registry: ModelRegistry, tenant_id: str | None, model: str | None) -> None: ...


class ModelRegistry:
    """All models the gateway knows, by name."""

    def __init__(
        self,
        models_dir: Path,
        pool: DevicePool,
        metrics: Metrics,
        *,
        hub_timeout_s: float = 3.0,
        finder: ModelFinder | None = None,
        fair_queueing: bool = True,
        batch_max_wait_s: float = BATCH_MAX_WAIT_S,
        memory_mb: float | None = None,
        tune_threads: bool = True,
        cpu_linear: CpuLinear = "auto",
    ) -> None:
        self.models_dir = models_dir
        # CPU replicas' intra-op threads: all of torch's, or one where a warm-up pass is too short to
        # split (timed at load); with MAAS_TORCH_THREADS, what it fixes for every replica
        self.cpu_threads = torch.get_num_threads()
        self.tune_threads = tune_threads
        self.fair_queueing = fair_queueing  # False: each model's queue is first in, first out
        self.batch_max_wait_s = batch_max_wait_s  # batch inputs held back on a CPU: at most this
        self.pool = pool
        self.metrics = metrics
        self.hub_timeout_s = hub_timeout_s
        self.cpu_linear = cpu_linear  # float32 Linear layers on a CPU (runtime/cpu_linear.py)
        self.finder = finder
        self.entries: dict[str, ModelEntry] = {}
        self.preload_done = asyncio.Event()
        self._loads: set[asyncio.Task[None]] = set()  # background loads (registered models)
        self.residency = Residency(self, pool, metrics, device_budgets(pool.devices, memory_mb))

    def discover(self) -> None:
        """Read every manifest in the models directory (does not load anything)."""
        for found in discover_manifests(self.models_dir):
            self._add(found)

    def _add(self, found: ManifestFile) -> None:
        name = found.name
        if name in self.entries:
            other = self.entries[name].manifest_path.name
            log.warning("model %s: %s repeats the name used by %s; ignored", name, found.path.name, other)
            return
        entry = ModelEntry(name, found.path, found.manifest)
        if found.error:
            entry.status, entry.reason = ModelStatus.UNAVAILABLE, found.error
            log.warning("model %s unavailable: %s", name, found.error)
        self.entries[name] = entry
        self.metrics.registered(name, None)

    def get(self, name: str) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise NotFound(f"model {name!r} not found")
        return entry

    def get_for(self, caller: Principal, name: str) -> ModelEntry:
        """The model `caller` may use: 404 for unknown ones and other tenants' private ones, 403 for
        ones its key is not allowed. The one owner check of the models and predict routes."""
        entry = self.get(name)
        caller.require_model(name, entry.owner, entry.base_model)
        return entry

    async def find_for(self, caller: Principal, name: str) -> ModelEntry:
        """`get_for`, once a model this replica does not know yet was looked for among those that
        other replicas fine-tuned."""
        if name not in self.entries and self.finder is not None:
            await self.finder.discover(self, caller.tenant_id, name)
        return self.get_for(caller, name)

    async def state_for(self, caller: Principal, name: str) -> ModelEntry:
        """`find_for`, for the routes that show a model's state (detail, metadata, readiness): a
        front-end worker asks the model process for it first (`MirrorRegistry`)."""
        return await self.find_for(caller, name)

    async def list_for(self, caller: Principal) -> list[ModelEntry]:
        """The models `caller` may use, the tenant's fine-tuned ones included wherever they were trained."""
        if self.finder is not None and caller.tenant_id is not None:
            await self.finder.discover(self, caller.tenant_id, None)
        return [e for e in self.list() if caller.may_use(e.name, e.owner, e.base_model)]

    def add_fine_tuned(self, name: str, folder: Path, owner: str, base_model: str) -> ModelEntry:
        """Register a fine-tuned model saved in `folder` as `owner`'s private model (not loaded yet).
        It is served like its base: same batching, dtype and price. A LoRA adapter folder is served
        over its base model's weights."""
        base = self.entries.get(base_model)
        inherited = base.manifest if base is not None and base.manifest is not None else None
        base_source = None
        if (folder / "adapter_config.json").exists():  # a LoRA adapter: served over its base's weights
            base_folder = _local_folder(base)
            base_source = str(base_folder) if base_folder else f"missing base model {base_model!r}"
        manifest = ModelManifest(
            name=name,
            task=inherited.task if inherited else "image-classification",
            adapter="transformers",
            source=str(folder.resolve()),
            base_source=base_source,
            dtype=inherited.dtype if inherited else "auto",
            batching=inherited.batching if inherited else Batching(),
            price=inherited.price if inherited else Price(),
            replicas=1,
            preload=True,
            description=f"fine-tuned from {base_model}",
        )
        root = base.base_model if base is not None and base.base_model else base_model
        entry = ModelEntry(name, folder / "manifest.yaml", manifest, owner=owner, base_model=root)
        if base_source is not None and base is not None:
            entry.adapts = base_model  # served as an adapter over the base's replicas
        self.entries[name] = entry
        self.metrics.registered(name, owner)
        return entry

    def public(self) -> list[ModelEntry]:
        """The models no tenant owns: what endpoints without a key may name."""
        return [e for e in self.entries.values() if e.owner is None]

    def owner_of(self, name: str) -> str | None:
        """The tenant owning the model `name`; None for a public (or unknown) one."""
        entry = self.entries.get(name)
        return entry.owner if entry is not None else None

    def list(self) -> list[ModelEntry]:
        return list(self.entries.values())

    async def preload(self) -> None:
        """Load every `preload` model not loaded yet, one after another, where it fits without
        evicting another (the rest load on their first use), then mark the registry ready."""
        try:
            for entry in self.list():
                if entry.manifest and entry.manifest.preload and entry.status is ModelStatus.NOT_LOADED:
                    with contextlib.suppress(ModelUnavailable):  # listed as unavailable, with its reason
                        await self.ensure_loaded(entry, make_room=False)
        finally:
            self.preload_done.set()

    async def ensure_loaded(
        self, entry: ModelEntry, deadline: float | None = None, *, make_room: bool = True
    ) -> ModelEntry:
        """`entry`, loaded now if it is not resident (see `Residency.ensure_loaded`): 503 if it
        cannot be, 504 if `deadline` passes first. A LoRA fine-tune is served over its base model
        (made resident first), unless it can only be merged into a copy of its own."""
        base = (
            self.entries.get(entry.adapts) if entry.adapts and entry.status is not ModelStatus.READY else None
        )
        if base is not None:  # before this entry's lock: a base's unload never waits on it
            await self.ensure_loaded(base, deadline, make_room=make_room)
            if await lora.serve_over(entry, base, self.metrics):
                self.residency.touch(entry)
                return entry
        return await self.residency.ensure_loaded(entry, deadline, make_room=make_room)

    def load_replicas(self, entry: ModelEntry, devices: Sequence[torch.device]) -> None:
        """Load one replica of `entry` on each of `devices` (in a worker thread): `ready`, or
        `unavailable` with the reason. Torch runs on one intra-op thread meanwhile: a parallel
        pass here would leave this thread a team of OpenMP threads of its own (`on_threads`)."""
        with one_thread():
            self._load_replicas(entry, devices)

    def _load_replicas(self, entry: ModelEntry, devices: Sequence[torch.device]) -> None:
        assert entry.manifest is not None
        manifest = entry.manifest
        started = time.perf_counter()
        replicas: list[Replica] = []
        try:
            for device in devices:
                dtype = resolve_dtype(manifest.dtype, device)
                adapter = load_adapter(
                    manifest,
                    entry.manifest_path.parent,
                    device,
                    dtype,
                    hub_timeout_s=self.hub_timeout_s,
                    cpu_linear=self.cpu_linear,
                )
                adapter.warmup()
                threads = self._threads(adapter, device)
                release_cached_memory(device)
                depth = self.pool.pipeline_depth(device) if adapter.pipelined else 1
                alone = 0
                if device.type == "cpu":
                    alone, (depth, threads) = threads, cpu_lanes(threads, adapter.pipelined)
                executor = ThreadPoolExecutor(depth, thread_name_prefix=f"maas-{entry.name}")
                replicas.append(
                    Replica(adapter, device, executor, pipeline=depth, threads=threads, alone_threads=alone)
                )
        except Exception as exc:  # any load failure leaves the model listed, with its reason
            for replica in replicas:
                if replica.executor is not None:
                    replica.executor.shutdown(wait=False)
            expected = isinstance(exc, (SourceError, ValueError, OSError))
            entry.status = ModelStatus.UNAVAILABLE
            entry.reason = str(exc) if expected else f"{type(exc).__name__}: {exc}"
            log.warning("model %s unavailable: %s", entry.name, entry.reason)
            return
        entry.replicas = replicas
        entry.load_seconds = time.perf_counter() - started
        entry.status, entry.reason = ModelStatus.READY, None
        self.metrics.loaded(entry.name, entry.owner, entry.load_seconds)
        log.info(
            "model %s ready on %s in %.2fs",
            entry.name,
            ", ".join(f"{r.device} ({dtype_name(r.adapter.dtype)}{_threads_note(r)})" for r in replicas),
            entry.load_seconds,
        )

    def _threads(self, adapter: Any, device: torch.device) -> int:
        """The intra-op threads for a replica's forward passes (0: as the process has them)."""
        if device.type != "cpu":
            return 0
        if not self.tune_threads:
            return self.cpu_threads
        return intra_op_threads(adapter.warmup, self.cpu_threads)  # its task's own representative pass

    def start_serving(self, entry: ModelEntry) -> None:
        """Start a batcher on each replica of a model just made ready; then settle the heap,
        where the model's modules now live (the preload settles once, when it ends)."""
        assert entry.manifest is not None
        batching = entry.manifest.batching
        for replica in entry.replicas:
            assert replica.executor is not None  # a replica loaded in this process
            replica.batcher = Batcher(
                run_batch=replica.run_batch,
                executor=replica.executor,
                max_batch_size=batching.max_batch_size,
                max_delay_s=batching.max_delay_ms / 1000,
                max_contended_batch_s=batching.contended_batch_s(replica.device.type),
                on_batch=self.metrics.batch_observer(self.metrics.model_label(entry.name, entry.owner)),
                name=f"{entry.name}@{replica.device}",
                arriving=lambda: entry.arriving_here,
                fair=self.fair_queueing,
                batch_max_wait_s=self.batch_max_wait_s,
                pipeline=replica.pipeline,
                spread=replica.device.type == "cpu",
                computing_since=computing_since,
            )
            replica.batcher.start()
            self.pool.attach(replica.device, replica.batcher)
        if self.preload_done.is_set():
            heap.settle()

    def add_registered(self, manifest: ModelManifest, version: datetime, created: datetime) -> ModelEntry:
        """List a model registered through the admin API (not loaded yet). Its relative paths are
        read from the models folder, like a manifest file's."""
        entry = ModelEntry(manifest.name, self.models_dir / f"{manifest.name}.json", manifest)
        entry.version, entry.registered_at = version, int(created.timestamp())
        self.entries[entry.name] = entry
        self.metrics.registered(entry.name, None)
        return entry

    def start_loading(self, entry: ModelEntry, *, make_room: bool = True) -> None:
        """Load `entry` in the background (`loading` at once; then `ready` or `unavailable`).
        Without `make_room` it loads only if it fits without evicting another model."""
        if entry.manifest is None or entry.status in (ModelStatus.READY, ModelStatus.LOADING):
            return
        entry.status, entry.reason = ModelStatus.LOADING, None
        task = asyncio.create_task(self._load_quietly(entry, make_room), name=f"maas-load-{entry.name}")
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)

    async def _load_quietly(self, entry: ModelEntry, make_room: bool) -> None:
        with contextlib.suppress(ModelUnavailable):  # listed as unavailable, with its reason
            await self.ensure_loaded(entry, make_room=make_room)

    async def unload(self, entry: ModelEntry) -> None:
        """Answer every input queued for `entry`, then free its replicas; it stays listed as
        `unloaded` (and loads again on its next use)."""
        async with entry.load_lock:
            await self.drop_replicas(entry, UNLOADED_REASON)

    async def drop_replicas(self, entry: ModelEntry, reason: str) -> None:
        """`unload` for a caller holding `entry.load_lock`: `unloaded`, with `reason`."""
        await self._release(entry)
        heap.settle()  # its modules are found and freed even where a cycle holds them
        entry.status, entry.reason, entry.load_seconds = ModelStatus.UNLOADED, reason, None
        self.metrics.registered(entry.name, entry.owner)
        self.residency.wake()  # its room is free

    async def remove(self, name: str) -> None:
        """Stop listing `name` (new requests get 404), then drain and free it."""
        entry = self.entries.pop(name, None)
        if entry is not None:
            await self.unload(entry)

    async def _release(self, entry: ModelEntry) -> None:
        if entry.served_over is not None:
            await lora.detach(entry)  # a LoRA adapter: its base's replicas stay
            return
        await lora.detach_all(entry)
        for replica in entry.replicas:
            if replica.batcher is not None:
                await replica.batcher.close()  # finishes every queued input first
                self.pool.detach(replica.device, replica.batcher)
        replicas, entry.replicas = entry.replicas, []
        for replica in replicas:
            if replica.executor is not None:
                await asyncio.to_thread(replica.executor.shutdown, wait=True)
            release_cached_memory(replica.device)

    async def close(self) -> None:
        """Finish every queued input, then release the replicas' threads."""
        loads = {*self._loads, *(e.load_task for e in self.entries.values() if e.load_task is not None)}
        for task in loads:
            task.cancel()
        await asyncio.gather(*loads, return_exceptions=True)
        for entry in self.entries.values():
            await self._release(entry)


def _threads_note(replica: Replica) -> str:
    """How many intra-op threads a CPU replica's forward passes run on (and how many batches at
    once, where several), for the ready line."""
    if not replica.threads:
        return ""
    threads = f"{replica.threads} thread{'s' if replica.threads > 1 else ''}"
    if replica.device.type == "cpu" and replica.pipeline > 1:
        return f", {replica.pipeline} batches at once on {threads} each"
    return f", {threads}"


def _local_folder(entry: ModelEntry | None) -> Path | None:
    if entry is None or entry.manifest is None:
        return None
    try:
        return resolve_local_folder(entry.manifest.source, entry.manifest_path.parent)
    except SourceError:
        return None
