"""Image decoding and preprocessing in worker processes (`MAAS_PREPROCESS_PROCESSES`).

Decoding a JPEG and running a model's image processor hold the GIL for much of their time, so in
one process they compete with the HTTP stack and the batcher for one interpreter. With a pool,
the request's raw image bytes go to a worker process, which checks and decodes them exactly as
the gateway would (`decode_image`: same limits, same errors) and runs the model's own image
processor (sent along: a small picklable object); the pixel arrays come back and go to the
batcher as they would from a thread. Models without a transformers image processor (the torch
adapter's own preprocessing, text models) stay on threads.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch

from service.serving.inputs import RawInput, decode_image
from service.serving.runtime.fast_images import ImagePlan


def _warm() -> None:
    """Import what a first task needs before any request waits for it."""
    import transformers.image_processing_utils  # noqa: F401


def _prepare_images(processor: Any, items: list[RawInput], max_pixels: int) -> list[np.ndarray[Any, Any]]:
    """In the worker: decode each input (the first bad one raises its 4xx error) and preprocess,
    with the fast path's plan (uint8) or the model's own processor."""
    if isinstance(processor, ImagePlan):
        return [processor.pixels(decode_image(item, max_pixels, processor.draft)).numpy() for item in items]
    images = [decode_image(item, max_pixels) for item in items]
    pixels = processor(images=images, return_tensors="np")["pixel_values"]
    return [np.ascontiguousarray(pixels[i : i + 1]) for i in range(len(images))]


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

    async def prepare(self, processor: Any, inputs: list[RawInput], max_pixels: int) -> list[torch.Tensor]:
        loop = asyncio.get_running_loop()
        arrays = await loop.run_in_executor(self._executor, _prepare_images, processor, inputs, max_pixels)
        return [torch.from_numpy(array) for array in arrays]

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
