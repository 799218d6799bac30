"""The model registry: manifests -> models with a status, loaded onto the device pool.

Every manifest file becomes a listed model. One that cannot be parsed or loaded stays listed
as `unavailable` with the reason; the gateway starts regardless. Models marked `preload`
load at start-up (in the background: `/readyz` says when they are done); the others load on
their first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import torch

from service.errors import ModelUnavailable, NotFound
from service.observability.metrics import Metrics
from service.serving.batching import Batcher
from service.serving.devices import DevicePool, dtype_name, release_cached_memory, resolve_dtype
from service.serving.fairqueue import ServiceClass
from service.serving.manifests import Batching, ManifestFile, ModelManifest, Price, discover_manifests
from service.serving.runtime import ModelAdapter, Output, SourceError, load_adapter
from service.serving.runtime.base import InputKind
from service.serving.runtime.sources import resolve_local_folder
from service.tenancy.principal import Principal

log = logging.getLogger(__name__)

INPUT_KIND: dict[str, InputKind] = {
    "image-classification": "image",
    "feature-extraction": "text",
    "text-classification": "text",
    "token-classification": "text",
    "image-feature-extraction": "image",
    "zero-shot-image-classification": "image",
    "object-detection": "image",
    "image-segmentation": "image",
}


class ModelStatus(StrEnum):
    NOT_LOADED = "not_loaded"
    LOADING = "loading"
    READY = "ready"
    UNAVAILABLE = "unavailable"


@dataclass
class Replica:
    """One copy of a model on one device: its own worker thread for forward passes, fed by its batcher."""

    adapter: ModelAdapter
    device: torch.device
    executor: ThreadPoolExecutor
    batcher: Batcher | None = None  # started once the model is loaded, on the event loop


@dataclass
class ModelEntry:
    name: str
    manifest_path: Path
    manifest: ModelManifest | None
    status: ModelStatus = ModelStatus.NOT_LOADED
    reason: str | None = None
    replicas: list[Replica] = field(default_factory=list)
    load_seconds: float | None = None
    load_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    owner: str | None = None  # the tenant id of a fine-tuned model; None: public
    base_model: str | None = None  # a fine-tuned model's public ancestor (what allow-lists name)
    arriving: int = 0  # requests being read and decoded, not yet queued

    @contextlib.contextmanager
    def arriving_request(self) -> Iterator[None]:
        """Mark a request as on its way to the queue while its inputs are read and decoded."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1
            if self.arriving == 0:
                for batcher in self.batchers:
                    batcher.poke()

    @property
    def input_kind(self) -> InputKind:
        assert self.manifest is not None
        return INPUT_KIND[self.manifest.task]

    @property
    def num_labels(self) -> int | None:
        return self.adapter.num_labels if self.replicas else None

    @property
    def created(self) -> int:
        """When the model was made, in Unix seconds: when its manifest (a fine-tuned model: its
        folder) was last written."""
        for path in (self.manifest_path, self.manifest_path.parent):
            with contextlib.suppress(OSError):
                return int(path.stat().st_mtime)
        return 0

    def describe(self) -> dict[str, Any]:
        """The public view of this model (models list and detail; OpenAI's `Model` fields included)."""
        m = self.manifest
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "task": m.task if m else None,
            "adapter": m.adapter if m else None,
            "status": self.status.value,
            "reason": self.reason,
            "dtype": (dtype_name(self.adapter.dtype) if self.replicas else (m.dtype if m else None)),
            "devices": [str(r.device) for r in self.replicas],
            "replicas": m.replicas if m else 0,
            "batching": m.batching.model_dump(exclude_none=True) if m else None,
            "preload": m.preload if m else False,
            "description": m.description if m else "",
            "labels": self.num_labels,
            "load_seconds": round(self.load_seconds, 3) if self.load_seconds is not None else None,
            "owned_by": "tenant" if self.owner else "system",  # fine-tuned models are their tenant's
        }

    @property
    def batchers(self) -> list[Batcher]:
        return [r.batcher for r in self.replicas if r.batcher is not None]

    @property
    def queue_depth(self) -> int:
        return sum(len(b.queue) for b in self.batchers)

    def class_depth(self, service_class: ServiceClass) -> int:
        return sum(b.queue.depth(service_class) for b in self.batchers)

    @property
    def adapter(self) -> ModelAdapter:
        """An adapter for preprocessing (the same on every replica; tensors stay on the CPU)."""
        return self.replicas[0].adapter


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
    ) -> None:
        self.models_dir = models_dir
        self.fair_queueing = fair_queueing  # False: each model's queue is first in, first out
        self.pool = pool
        self.metrics = metrics
        self.hub_timeout_s = hub_timeout_s
        self.finder = finder
        self.entries: dict[str, ModelEntry] = {}
        self.preload_done = asyncio.Event()

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
        """Load every `preload` model, one after another, then mark the registry ready."""
        try:
            for entry in self.list():
                if entry.manifest and entry.manifest.preload:
                    with contextlib.suppress(ModelUnavailable):  # listed as unavailable, with its reason
                        await self.ensure_loaded(entry)
        finally:
            self.preload_done.set()

    async def ensure_loaded(self, entry: ModelEntry) -> ModelEntry:
        """Load `entry` if it is not loaded yet; raise 503 if it cannot be."""
        if entry.status is not ModelStatus.READY:
            async with entry.load_lock:
                if entry.status is ModelStatus.NOT_LOADED:
                    entry.status = ModelStatus.LOADING
                    await asyncio.to_thread(self._load, entry)
                    if entry.status is ModelStatus.READY:
                        self._start_batchers(entry)
        if entry.status is not ModelStatus.READY:
            raise ModelUnavailable(f"model {entry.name!r} is unavailable: {entry.reason}")
        return entry

    def _load(self, entry: ModelEntry) -> None:
        assert entry.manifest is not None
        manifest = entry.manifest
        started = time.perf_counter()
        replicas: list[Replica] = []
        try:
            need = estimate_bytes(manifest, entry.manifest_path.parent)
            for device in self.pool.place(manifest.replicas, need):
                dtype = resolve_dtype(manifest.dtype, device)
                adapter = load_adapter(
                    manifest,
                    entry.manifest_path.parent,
                    device,
                    dtype,
                    hub_timeout_s=self.hub_timeout_s,
                )
                adapter.warmup()
                release_cached_memory(device)
                executor = ThreadPoolExecutor(1, thread_name_prefix=f"maas-{entry.name}")
                replicas.append(Replica(adapter, device, executor))
        except Exception as exc:  # any load failure leaves the model listed, with its reason
            for replica in replicas:
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
            ", ".join(f"{r.device} ({dtype_name(r.adapter.dtype)})" for r in replicas),  # what `auto` chose
            entry.load_seconds,
        )

    def _start_batchers(self, entry: ModelEntry) -> None:
        assert entry.manifest is not None
        batching = entry.manifest.batching
        for replica in entry.replicas:
            replica.batcher = Batcher(
                run_batch=_predictor(replica.adapter),
                executor=replica.executor,
                max_batch_size=batching.max_batch_size,
                max_delay_s=batching.max_delay_ms / 1000,
                on_batch=self.metrics.batch_observer(self.metrics.model_label(entry.name, entry.owner)),
                name=f"{entry.name}@{replica.device}",
                arriving=lambda: entry.arriving,
                fair=self.fair_queueing,
            )
            replica.batcher.start()
            self.pool.attach(replica.device, replica.batcher)

    async def close(self) -> None:
        """Finish every queued input, then release the replicas' threads."""
        for entry in self.entries.values():
            for replica in entry.replicas:
                if replica.batcher is not None:
                    await replica.batcher.close()
                    self.pool.detach(replica.device, replica.batcher)
                replica.executor.shutdown(wait=True)


def _predictor(adapter: ModelAdapter) -> Callable[[list[Any], int], list[Output]]:
    def run(features: list[Any], top_k: int) -> list[Output]:
        return adapter.predict(features, top_k=top_k)

    return run


def _local_folder(entry: ModelEntry | None) -> Path | None:
    if entry is None or entry.manifest is None:
        return None
    try:
        return resolve_local_folder(entry.manifest.source, entry.manifest_path.parent)
    except SourceError:
        return None


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def estimate_bytes(manifest: ModelManifest, manifest_dir: Path) -> int | None:
    """About how much memory one replica needs: its weight files, scaled to the dtype asked for
    (weights are assumed stored in float32). None when the weights are not on disk (hub ids)."""
    try:
        folder = resolve_local_folder(manifest.source, manifest_dir)
    except SourceError:
        return None
    if folder is None:
        return None
    folders = [folder]
    if manifest.base_source is not None:  # a LoRA adapter: the merged model weighs what its base does
        with contextlib.suppress(SourceError):
            folders += [f for f in [resolve_local_folder(manifest.base_source, manifest_dir)] if f]
    stored = sum(p.stat().st_size for f in folders for p in f.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    if not stored:
        return None
    per_param = DTYPE_BYTES.get(manifest.dtype, 4)  # auto: float32 on CPU, less on CUDA
    return stored * per_param // 4
