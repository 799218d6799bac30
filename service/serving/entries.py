"""A listed model and its replicas: what the registry keeps per model name."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from service.serving.batching import Batcher
from service.serving.devices import dtype_name, on_threads, use_threads
from service.serving.fairqueue import ServiceClass
from service.serving.manifests import ModelManifest
from service.serving.runtime import ModelAdapter, Output
from service.serving.runtime.base import InputKind
from service.serving.status import ModelStatus

if TYPE_CHECKING:
    from service.serving.runtime.lora_views import LoraHost

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


@dataclass
class Replica:
    """One copy of a model on one device: its own worker thread for forward passes, fed by its batcher."""

    adapter: ModelAdapter
    device: torch.device
    executor: ThreadPoolExecutor | None  # None in a front-end worker: the model runs elsewhere
    batcher: Batcher | None = None  # started once the model is loaded, on the event loop
    pipeline: int = 1  # batches in flight at once (the executor's threads): 2 for some GPU replicas
    # the LoRA adapters this replica's model serves in its own batches (service/serving/lora.py)
    lora: LoraHost | None = None
    shared: bool = False  # a LoRA adapter's: the batcher and thread are its base replica's
    threads: int = 0  # intra-op threads of its forward passes on a CPU (0: the process's setting)
    alone_threads: int = 0  # a CPU lane's threads while its batch is the only one in hand (0: `threads`)

    def run_batch(self, features: list[Any], top_k: int) -> list[Output]:
        """One forward pass over `features` on this replica's thread (a CPU pass on its intra-op
        threads once it holds as many cores: `on_threads`)."""
        # a CPU lane's batch alone in hand takes every thread: a lone request is no slower
        batcher = self.batcher
        alone = batcher is not None and batcher.in_flight == len(features) and not batcher.queue
        threads = self.alone_threads if alone and self.alone_threads else self.threads
        if self.device.type != "cpu":
            use_threads(threads)
            return self._predict(features, top_k)
        return on_threads(threads, lambda: self._predict(features, top_k))

    def _predict(self, features: list[Any], top_k: int) -> list[Output]:
        if self.lora is not None:  # its LoRA adapters' inputs may share the batch
            return self.lora.predict(features, top_k=top_k)
        return self.adapter.predict(features, top_k=top_k)


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
    # a model registered through the admin API: its row's last change (None: a folder or fine-tuned model)
    version: datetime | None = None
    registered_at: int | None = None  # when it was registered, in Unix seconds
    # a LoRA fine-tune: the model whose replicas serve it as an adapter (service/serving/lora.py)
    adapts: str | None = None
    served_over: ModelEntry | None = None  # the model whose replicas serve it now (`adapts`, loaded)
    adapters: dict[str, ModelEntry] = field(default_factory=dict)  # the LoRA fine-tunes served over this one
    in_flight: int = 0  # inputs queued or running
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    # residency (service/serving/residency.py): what a replica holds, when it was last used, who uses it
    memory_bytes: int | None = None  # one replica's memory, counted against its device's budget
    last_used: float = 0.0  # on the residency clock: the least recently used is evicted first
    users: int = 0  # requests and batch jobs holding the model: it is not evicted meanwhile
    load_task: asyncio.Task[None] | None = field(default=None, repr=False)  # the load under way, shared

    @property
    def pinned(self) -> bool:
        return self.manifest is not None and self.manifest.pinned

    @property
    def adapters_in_use(self) -> bool:
        """Whether a LoRA fine-tune served over this model is used (held, arriving, queued or
        running): then this model is in use too, and is not evicted."""
        return any(a.users or a.arriving or a.in_flight for a in self.adapters.values())

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

    @contextlib.contextmanager
    def inputs_in_flight(self, inputs: int) -> Iterator[None]:
        """Count `inputs` as queued or running until the block ends."""
        self.in_flight += inputs
        try:
            yield
        finally:
            self.in_flight -= inputs
            if self.in_flight == 0:
                self._idle.set()

    async def until_idle(self) -> None:
        """Return once no input of this model is queued or running."""
        while self.in_flight:
            self._idle.clear()
            await self._idle.wait()

    @property
    def arriving_here(self) -> int:
        """Requests on their way to this model's batches: its own and its LoRA adapters'."""
        return self.arriving + sum(a.arriving for a in self.adapters.values())

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
        folder) was last written; a registered model: when it was registered."""
        if self.registered_at is not None:
            return self.registered_at
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
            "pinned": self.pinned,
            "description": m.description if m else "",
            "labels": self.num_labels,
            "load_seconds": round(self.load_seconds, 3) if self.load_seconds is not None else None,
            "compile": self.compile_info(),
            "cpu_linear": self.adapter.linear_kernels.describe()
            if self.replicas and self.adapter.linear_kernels
            else None,
            "owned_by": "tenant" if self.owner else "system",  # fine-tuned models are their tenant's
        }

    def compile_info(self) -> dict[str, Any] | None:
        """What `compile: true` became (None where the manifest does not ask for it)."""
        if self.manifest is None or not self.manifest.compile:
            return None
        state = self.adapter.compile_state if self.replicas else None
        if state is None:
            return {"active": False, "batch_sizes": [], "reason": "compiled when loaded", "seconds": None}
        return state.describe()

    @property
    def batchers(self) -> list[Batcher]:
        return [r.batcher for r in self.replicas if r.batcher is not None]

    @property
    def queue_depth(self) -> int:
        """Inputs in this model's own queues (a base's hold its LoRA adapters' inputs too)."""
        return sum(len(r.batcher.queue) for r in self.replicas if r.batcher is not None and not r.shared)

    def class_depth(self, service_class: ServiceClass) -> int:
        own = [r.batcher for r in self.replicas if r.batcher is not None and not r.shared]
        return sum(b.queue.depth(service_class) for b in own)

    @property
    def adapter(self) -> ModelAdapter:
        """An adapter for preprocessing (the same on every replica; tensors stay on the CPU)."""
        return self.replicas[0].adapter
