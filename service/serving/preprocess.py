"""Decoding and preprocessing a request's inputs, on a worker thread or in worker processes.

`prepare_features` is the one entry: each input is decoded with the gateway's checks
(`decode_image`: the pixel and aspect-ratio limits, and the size the model's preprocessing would
resize it to, all from the header) and preprocessed, and the request's deadline is checked
before each input and awaited with a timeout, so a slow input answers 504 on time.

With `MAAS_PREPROCESS_PROCESSES`: decoding a JPEG and running a model's image processor hold
the GIL for much of their time, so in one process they compete with the HTTP stack and the
batcher for one interpreter. With a pool, the request's raw image bytes go to a worker process,
which checks and decodes them exactly as the gateway would (same limits, same errors) and runs
the model's image processor (the fast path's plan or the model's own processor, sent along: a
small picklable object); the pixel arrays come back and go to the batcher as they would from a
thread. Text models stay on threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Literal

import anyio
import numpy as np
import torch

from service.serving.admission import PreprocessGate
from service.serving.deadlines import before_deadline, check_deadline
from service.serving.devices import use_threads
from service.serving.fairqueue import ANYONE, Share
from service.serving.inputs import ImageLimits, RawInput, load_image, open_image, reading
from service.serving.runtime.base import InputKind, ModelAdapter
from service.serving.runtime.fast_images import ImagePlan
from service.serving.runtime.images import processor_resized_size

STAGE = "decoding and preprocessing the inputs"


def _warm() -> None:
    """Import what a first task needs before any request waits for it."""
    import transformers.image_processing_utils  # noqa: F401


def prepare_inputs(
    adapter: ModelAdapter, kind: InputKind, inputs: list[RawInput], limits: ImageLimits, deadline: float
) -> list[Any]:
    """Decode and preprocess every input, in order (on a worker thread): the first bad input fails
    the request with its 4xx, and a passed `deadline` with 504 before the next input starts."""
    use_threads(1)  # per input and small; a parallel op would leave this thread an OpenMP team (`on_threads`)
    features: list[Any] = []
    for item in inputs:
        check_deadline(deadline, f"preprocessing input {item.index}")
        # one decoded image alive at a time: it is dropped as soon as its features exist
        if kind == "image":
            image = open_image(item, limits, adapter.resized_size)  # every check, from the header
            assert isinstance(item.data, bytes)
            encoded = adapter.device_decoded(item.data, image, item.index)
            if encoded is not None:  # the device decodes it (GPU JPEG decode)
                features.append(encoded)
                continue
            features.append(adapter.preprocess(load_image(image, item.index, adapter.draft)))
            del image
        else:
            features.append(adapter.preprocess(item.data))
    return features


def prepare_images(
    processor: Any,
    items: list[RawInput],
    limits: ImageLimits,
    deadline: float,
    done: list[np.ndarray[Any, Any]] | None = None,
    pixel_budget: int | None = None,
) -> list[np.ndarray[Any, Any]]:
    """In the worker: decode and preprocess each input in turn, as a thread would (the first bad
    one raises its 4xx error), with the fast path's plan (uint8) or the model's own processor,
    holding one decoded image at a time. `done`: the arrays of the first inputs, made already.

    With `pixel_budget` (on the event loop, see `RemoteInference.features`): stop before the
    image whose decoding (at the scale its header and the plan's draft give) would take the
    pixels decoded past the budget, and return the arrays made so far; the rest are for a thread."""
    resized = functools.partial(processor_resized_size, processor)
    plan = processor if isinstance(processor, ImagePlan) else None
    arrays = [] if done is None else list(done)
    for item in items[len(arrays) :]:
        check_deadline(deadline, f"preprocessing input {item.index}")
        image = open_image(item, limits, resized)
        if plan is not None:
            with reading(item.index):
                plan.draft(image)  # a JPEG's size is now the scale it decodes at
        if pixel_budget is not None:
            pixel_budget -= image.width * image.height
            if pixel_budget < 0:
                return arrays
        image = load_image(image, item.index)
        if plan is not None:
            arrays.append(plan.pixels(image).numpy())
        else:
            arrays.append(np.ascontiguousarray(processor(images=image, return_tensors="np")["pixel_values"]))
        del image
    return arrays


async def prepare_features(
    pool: PreprocessPool | None,
    adapter: ModelAdapter,
    kind: InputKind,
    inputs: list[RawInput],
    limits: ImageLimits,
    deadline: float,
    *,
    gate: PreprocessGate | None = None,
    share: Share = ANYONE,
) -> tuple[list[Any], Literal["process", "thread"]]:
    """The inputs' features, and where they were made: in the preprocessing processes where the
    model's image processor can run there, else on a worker thread of this process. With a
    `gate`, the work waits for its turn there first (fairly, by `share`). 504 as soon as
    `deadline` passes (the work stops before its next input)."""
    async with admitted(gate, share, deadline):
        if pool is not None and kind == "image":
            processor = pool.processor_of(adapter)
            if processor is not None:
                return await pool.prepare(processor, inputs, limits, deadline), "process"
        work = anyio.to_thread.run_sync(
            prepare_inputs, adapter, kind, inputs, limits, deadline, abandon_on_cancel=True
        )
        return await before_deadline(deadline, STAGE, work), "thread"


def admitted(
    gate: PreprocessGate | None, share: Share, deadline: float
) -> contextlib.AbstractAsyncContextManager[None]:
    """A slot of `gate` for `share`'s request (504 at `deadline`), or nothing to wait for without one."""
    return contextlib.nullcontext() if gate is None else gate.admit(share, deadline)


class PreprocessPool:
    """A pool of `processes` worker processes (started with `spawn`: no forked torch threads)."""

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._executor = ProcessPoolExecutor(processes, mp_context=context, initializer=_warm)
        self.processes = processes

    def start(self) -> None:
        """Start every worker now, so that the first requests do not pay for it."""
        for future in [self._executor.submit(_warm) for _ in range(self.processes)]:
            future.result()

    @staticmethod
    def processor_of(adapter: Any) -> Any | None:
        """The adapter's image processor when it has one the workers can run, else None."""
        return getattr(adapter, "image_processor", None)

    async def prepare(
        self, processor: Any, inputs: list[RawInput], limits: ImageLimits, deadline: float
    ) -> list[torch.Tensor]:
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, prepare_images, processor, inputs, limits, deadline)
        arrays = await before_deadline(deadline, STAGE, work)
        return [torch.from_numpy(array) for array in arrays]

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
