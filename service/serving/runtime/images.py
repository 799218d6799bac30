"""What every transformers image model's adapter shares: its image processor, or the fast image
path (service/serving/runtime/fast_images.py) where that processor is a standard one."""

from __future__ import annotations

import io
from typing import Any, ClassVar

import torch
from PIL import Image

from service.serving.runtime.base import InputKind, ModelAdapter
from service.serving.runtime.compiled import Forward, compile_forward
from service.serving.runtime.device_jpeg import EncodedJpeg, device_decoder
from service.serving.runtime.fast_images import ImagePlan, Normalizer


def processor_resized_size(processor: Any, width: int, height: int) -> tuple[int, int]:
    """The size a transformers image processor (or the fast path's plan) resizes a width x height
    image to (before any crop), from its `size` settings: a fixed height and width, or the aspect
    ratio kept with a shortest and/or longest edge, or a bounding box or pixel budget."""
    if isinstance(processor, ImagePlan):
        return processor.resized(width, height)
    size = getattr(processor, "size", None)
    if not getattr(processor, "do_resize", True) or size is None:
        return width, height

    def field(name: str) -> float | None:
        value = size.get(name) if isinstance(size, dict) else getattr(size, name, None)
        return float(value) if value else None

    fixed_height, fixed_width = field("height"), field("width")
    if fixed_height and fixed_width:
        return round(fixed_width), round(fixed_height)
    scales: list[float] = []
    if shortest := field("shortest_edge"):
        crop_pct = getattr(processor, "crop_pct", None)  # ConvNeXt resizes past the crop first
        if crop_pct and shortest < 384:
            shortest /= crop_pct
        scales.append(shortest / min(width, height))
    if longest := field("longest_edge"):
        scales.append(longest / max(width, height))
    if (max_height := field("max_height")) and (max_width := field("max_width")):
        scales.append(min(max_height / height, max_width / width))
    if max_pixels := field("max_pixels"):
        scales.append((max_pixels / (width * height)) ** 0.5)
    if not scales:
        return width, height
    scale = min(scales)
    return max(1, round(width * scale)), max(1, round(height * scale))


class ImageAdapter(ModelAdapter):
    """An image model behind a transformers pipeline: images in, pixel batches on the device."""

    input_kind: ClassVar[InputKind] = "image"
    pipelined: ClassVar[bool] = True  # pixels in, one forward pass: nothing shared between batches

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype, *, fast: bool = True) -> None:
        super().__init__(device, dtype)
        self.pipe = pipe
        # the fast image path where the model's processor is a standard one, else the processor
        self.plan = ImagePlan.of_processor(pipe.image_processor) if fast else None
        self.normalizer = Normalizer(self.plan, device, dtype) if self.plan is not None else None
        # JPEGs decoded on the CPU unless `decode_jpegs_on_device` says otherwise
        self.jpeg_decoder, self.jpeg_decoding = device_decoder(self.plan, device, wanted=False)
        self.forward: Forward = self.model_forward  # compiled by `compile`

    def decode_jpegs_on_device(self, wanted: bool) -> None:
        """JPEGs decoded on the device (nvJPEG) where `wanted`, the device is CUDA and torchvision
        is installed; else on the CPU. The reason is in `jpeg_decoding`, for the load log."""
        self.jpeg_decoder, self.jpeg_decoding = device_decoder(self.plan, self.device, wanted=wanted)

    def model_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The model's output tensor for a pixel batch (its first dimension the batch's)."""
        raise NotImplementedError(f"{type(self).__name__} runs its model in `predict`")

    def compile(self, max_batch_size: int, *, name: str) -> None:
        with torch.inference_mode():
            sample = self.pixel_batch([self.preprocess(self.warmup_input())])
        self.forward, self.compile_state = compile_forward(
            self.model_forward, sample, max_batch_size, self.device, name=name
        )

    @property
    def image_processor(self) -> Any:
        """What turns a decoded image into features on the CPU (the fast path's plan, or the model's
        own processor): picklable, so a preprocessing process can run it."""
        return self.plan or self.pipe.image_processor

    def draft(self, image: Image.Image) -> None:
        if self.plan is not None:
            self.plan.draft(image)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        return processor_resized_size(self.image_processor, width, height)

    def device_decoded(self, data: bytes, image: Image.Image, index: int) -> Any | None:
        if self.jpeg_decoder is None or not self.jpeg_decoder.accepts(image, data):
            return None
        return self.jpeg_decoder.encoded(data, index)

    def preprocess(self, item: Image.Image) -> torch.Tensor:
        if self.plan is not None:
            return self.plan.pixels(item)
        pixels: torch.Tensor = self.pipe.image_processor(images=item, return_tensors="pt")["pixel_values"]
        return pixels

    def pixel_batch(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The batch's pixels on the device, in the model's dtype, normalised."""
        if self.jpeg_decoder is not None and any(isinstance(f, EncodedJpeg) for f in features):
            features = self.jpeg_decoder.batch(features)  # encoded JPEGs decoded on the device
        batch = torch.cat(features)
        if self.normalizer is not None:
            return self.normalizer(batch)
        return batch.to(self.device, self.dtype, non_blocking=True)

    def warmup(self) -> None:
        super().warmup()
        if self.jpeg_decoder is not None:  # nvJPEG sets itself up on its first call: not a request's
            buffer = io.BytesIO()
            self.warmup_input().save(buffer, format="JPEG")
            self.predict([self.jpeg_decoder.encoded(buffer.getvalue(), 0)], top_k=1)

    def warmup_input(self) -> Image.Image:
        return Image.new("RGB", (224, 224), (127, 127, 127))
