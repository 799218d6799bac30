"""What the tasks that answer in the original image's pixels share (object detection, image
segmentation): the model's own image processor on a worker thread, the original size kept beside
the pixels, and a batch padded to its largest image.

Their processors resize to a size range and pad, and the original size travels with the pixels,
which the preprocessing processes do not carry; so these adapters always preprocess on a thread."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image

from service.serving.runtime.base import InputKind, ModelAdapter, TaskParams, WithParams
from service.serving.runtime.images import processor_resized_size


@dataclass(frozen=True)
class Resized:
    """One image as the model reads it, and the size (height, width) its answer is scaled back to."""

    pixels: torch.Tensor  # (1, 3, h, w)
    original: tuple[int, int]


@dataclass(frozen=True)
class PaddedBatch:
    """A batch's model inputs, and each image's share (height, width) of the padded pixels."""

    inputs: dict[str, torch.Tensor]
    sizes: list[tuple[int, int]]


class OriginalSizeAdapter(ModelAdapter):
    """An image model behind a transformers pipeline whose answers are in each image's own pixels."""

    input_kind: ClassVar[InputKind] = "image"

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(device, dtype)
        self.pipe = pipe
        self.masked = "pixel_mask" in inspect.signature(pipe.model.forward).parameters

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        return processor_resized_size(self.pipe.image_processor, width, height)

    def preprocess(self, item: Image.Image) -> Resized:
        pixels = self.pipe.image_processor(images=item, return_tensors="pt")["pixel_values"]
        return Resized(pixels, (item.height, item.width))

    def padded(self, images: list[Resized]) -> PaddedBatch:
        """The images padded (bottom and right, as the processors pad a batch) to the batch's
        largest, with a pixel mask where the model reads one, on the device."""
        height = max(r.pixels.shape[-2] for r in images)
        width = max(r.pixels.shape[-1] for r in images)
        pixels = torch.zeros(len(images), 3, height, width)
        mask = torch.zeros(len(images), height, width, dtype=torch.long)
        sizes: list[tuple[int, int]] = []
        for i, image in enumerate(images):
            h, w = image.pixels.shape[-2:]
            pixels[i, :, :h, :w] = image.pixels[0]
            mask[i, :h, :w] = 1
            sizes.append((h, w))
        inputs = {"pixel_values": pixels.to(self.device, self.dtype)}
        if self.masked:
            inputs["pixel_mask"] = mask.to(self.device)
        return PaddedBatch(inputs, sizes)

    def warmup_input(self) -> Image.Image:
        return Image.new("RGB", (224, 224), (127, 127, 127))

    def warmup(self) -> None:
        self.predict([WithParams(self.preprocess(self.warmup_input()), TaskParams())], top_k=1)
