"""A front-end worker's view of the models, and its way of running them in the model process.

A worker lists the same models as the model process (manifests, registrations, fine-tunes: all
from the same folder and database) but loads none of them. `MirrorRegistry.ensure_loaded` asks
the model process to load the model and keeps what the worker needs to serve it: the task's
shape (input kind, output key, the parameters it reads) and, for image models, the recipe of
its preprocessing (the fast path's plan or the model's own processor: small, picklable). The
worker then reads, checks, decodes and preprocesses a request's inputs itself, on its own cores,
and sends the pixels (uint8 on the fast path) to the model process, whose batcher runs them
(`RemoteInference`). Text inputs, and images of models without such a recipe, cross as they
came and are preprocessed in the model process.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import torch

from service.engine import wire
from service.engine.client import RECONNECT_S, EngineClient, EngineGone
from service.serving.batching import Tally
from service.serving.deadlines import before_deadline
from service.serving.entries import ModelEntry, Replica
from service.serving.fairqueue import Share
from service.serving.inference import Inference
from service.serving.inputs import RawInput
from service.serving.preprocess import STAGE, admitted, prepare_images
from service.serving.registry import UNLOADED_REASON, ModelRegistry
from service.serving.runtime.base import InputKind, ModelAdapter, OutputKey, TaskParams
from service.serving.runtime.compiled import CompileState
from service.serving.runtime.cpu_linear import LinearKernels
from service.serving.runtime.fast_images import ImagePlan
from service.serving.status import ModelStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What the model process tells a worker about one model."""

    status: ModelStatus
    reason: str | None
    load_seconds: float | None
    devices: tuple[str, ...] = ()
    dtype: torch.dtype = torch.float32
    input_kind: InputKind = "image"
    output_key: OutputKey = "predictions"
    reads_params: frozenset[str] = frozenset()
    num_labels: int | None = None
    embedding_size: int | None = None
    processor: Any = None  # the image preprocessing recipe the worker runs; None: the model process does
    compile_state: CompileState | None = None  # manifest `compile: true`: what became of it
    linear_kernels: LinearKernels | None = None  # an eager float32 model on a CPU: its Linear layers
    complete: bool = False  # False: a status only (from `statuses`), without the processor


class RemoteAdapter(ModelAdapter):
    """A model loaded in the model process, as a worker sees it: its task's shape, no weights."""

    def __init__(self, info: ModelInfo, name: str, client: EngineClient) -> None:
        super().__init__(torch.device(info.devices[0] if info.devices else "cpu"), info.dtype)
        self.info, self.name, self.client = info, name, client
        self.image_processor = info.processor
        self.compile_state = info.compile_state
        self.linear_kernels = info.linear_kernels
        # the task's shape, per instance: a worker has one class for every task
        self.input_kind = info.input_kind  # type: ignore[misc]
        self.output_key = info.output_key  # type: ignore[misc]
        self.reads_params = info.reads_params  # type: ignore[misc]

    def preprocess(self, item: Any) -> Any:
        return item  # the worker preprocesses with `image_processor`, or the model process does

    def predict(self, features: list[Any], *, top_k: int) -> list[Any]:
        raise RuntimeError("a worker does not run models; the model process does")

    def warmup_input(self) -> Any:
        raise RuntimeError("a worker does not run models; the model process does")

    @property
    def num_labels(self) -> int | None:
        return self.info.num_labels

    @property
    def embedding_size(self) -> int | None:
        return self.info.embedding_size

    def token_counts(self, texts: list[str]) -> list[int]:
        """Counted by the model's tokenizer, in the model process (called from a worker thread)."""
        counts: list[int] = anyio.from_thread.run(self._count, texts)
        return counts

    async def _count(self, texts: list[str]) -> list[int]:
        counts: list[int] = await self.client.call("token_counts", model=self.name, texts=texts)
        return counts


class MirrorRegistry(ModelRegistry):
    """The registry of a front-end worker: every model listed, none loaded here."""

    def __init__(self, client: EngineClient, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client = client

    async def ensure_loaded(
        self, entry: ModelEntry, deadline: float | None = None, *, make_room: bool = True
    ) -> ModelEntry:
        if entry.status is ModelStatus.READY and entry.replicas and _complete(entry):
            return entry  # the model process loads it again, if it has evicted it since
        info: ModelInfo = await self.client.call("model", name=entry.name, deadline=deadline)
        self._apply(entry, info)
        return entry

    def _apply(self, entry: ModelEntry, info: ModelInfo) -> None:
        entry.status, entry.reason, entry.load_seconds = info.status, info.reason, info.load_seconds
        if info.status is not ModelStatus.READY:
            entry.replicas = []
        elif info.complete or not _complete(entry):
            adapter = RemoteAdapter(info, entry.name, self.client)
            entry.replicas = [Replica(adapter, torch.device(d), None) for d in info.devices or ("cpu",)]

    async def refresh(self) -> None:
        """Every model's status as the model process has it (what the models routes show)."""
        infos: dict[str, ModelInfo] = await self.client.call("statuses")
        for name, info in infos.items():
            if (entry := self.entries.get(name)) is not None:
                self._apply(entry, info)

    async def list_for(self, caller: Any) -> list[ModelEntry]:
        with contextlib.suppress(EngineGone):
            await self.refresh()
        return await super().list_for(caller)

    async def state_for(self, caller: Any, name: str) -> ModelEntry:
        with contextlib.suppress(EngineGone):
            await self.refresh()
        return await super().state_for(caller, name)

    async def preload(self) -> None:
        """Ready when the model process has finished its preloads."""
        try:
            while True:
                try:
                    await self.client.call("ready")
                    await self.refresh()
                    return
                except EngineGone:
                    await anyio.sleep(RECONNECT_S)  # restarting: ask again once it is back
        finally:
            self.preload_done.set()

    def start_loading(self, entry: ModelEntry, *, make_room: bool = True) -> None:
        if entry.status not in (ModelStatus.READY, ModelStatus.LOADING):
            entry.status, entry.reason = ModelStatus.LOADING, None  # the model process loads it

    async def unload(self, entry: ModelEntry) -> None:
        entry.replicas = []
        entry.status, entry.reason, entry.load_seconds = ModelStatus.UNLOADED, UNLOADED_REASON, None

    async def remove(self, name: str) -> None:
        self.entries.pop(name, None)

    async def close(self) -> None:
        return None


def _complete(entry: ModelEntry) -> bool:
    """Whether the worker holds `entry`'s preprocessing recipe (from a load it asked for)."""
    if not entry.replicas:
        return False
    adapter = entry.adapter
    return isinstance(adapter, RemoteAdapter) and adapter.info.complete


class RemoteInference(Inference):
    """`Inference` in a front-end worker: inputs read, checked and decoded here, run there."""

    def __init__(self, client: EngineClient, *args: Any, inline_pixels: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client = client
        self.inline_pixels = inline_pixels  # MAAS_INLINE_DECODE_PIXELS

    @contextlib.contextmanager
    def arriving(self, entry: ModelEntry) -> Iterator[None]:
        """The model process's batcher is told that a request is on its way (so that it waits for
        it rather than running a batch without it); the call that follows, or a failure, ends it."""
        self.client.notify("arrive", model=entry.name, delta=1)
        try:
            yield
        except BaseException:
            self.client.notify("arrive", model=entry.name, delta=-1)
            raise

    async def features(
        self, entry: ModelEntry, adapter: ModelAdapter, inputs: list[RawInput], deadline: float, share: Share
    ) -> list[Any]:
        processor = getattr(adapter, "image_processor", None)
        if processor is None or entry.input_kind != "image":
            return list(inputs)  # preprocessed in the model process
        async with admitted(self.gate, share, deadline):  # this worker's own admission
            arrays: list[Any] = []
            if self.inline_pixels and isinstance(processor, ImagePlan):
                # small images on the event loop: handing them to a thread costs more CPU than
                # decoding them (the worker has no core to spare for the thread anyway)
                arrays = prepare_images(
                    processor, inputs, self.limits.image, deadline, pixel_budget=self.inline_pixels
                )
            if len(arrays) < len(inputs):
                work = anyio.to_thread.run_sync(
                    prepare_images,
                    processor,
                    inputs,
                    self.limits.image,
                    deadline,
                    arrays,
                    abandon_on_cancel=True,
                )
                arrays = await before_deadline(deadline, STAGE, work)
        self.metrics.preprocessed.labels("worker").inc(len(arrays))
        return arrays

    async def queue(
        self,
        entry: ModelEntry,
        adapter: ModelAdapter,
        features: list[Any],
        params: TaskParams,
        *,
        top_k: int,
        deadline: float,
        tally: Tally,
        share: Share,
    ) -> list[Any]:
        with self.client.crossing(features) as crossing:  # pixels through shared memory
            outcome: wire.Outcome = await self.client.call(
                "infer",
                model=entry.name,
                features=crossing,
                params=params,
                top_k=top_k,
                deadline=deadline,
                share=share,
                arrived=True,
            )
        tally.compute_s += outcome.compute_s
        tally.queue_s = max(tally.queue_s, outcome.queue_s)
        return outcome.outputs
