"""The fast image path (manifest `preprocessing: fast`, the default): what a standard image
processor does (resize, centre crop, rescale, normalise), split where it is cheapest.

- On the CPU, per image: a JPEG is decoded at the smallest DCT scale that still covers the
  model's input (libjpeg's scaled decode, Pillow's `Image.draft`: 640x480 to a 32x32 model is
  decoded at 80x60), resized once and cropped, and kept as uint8: four times smaller than float32
  to copy, and no per-pixel float work under the GIL.
- On the device, per batch: one multiply-add in the model's dtype does rescale and normalise.

Only processors that are exactly these steps qualify (`ImagePlan.of_processor`); any other keeps
the model's own processor. `preprocessing: exact` in a manifest keeps it always.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

# the image processors whose preprocessing is exactly resize -> centre crop -> rescale -> normalise
_STANDARD_BACKENDS = ("PilBackend", "TorchvisionBackend")
_STEPS = ("_preprocess", "resize", "center_crop", "rescale", "normalize", "process_image")


@dataclass(frozen=True)
class ImagePlan:
    """Resize to `size` (width, height) or so that the shorter side is `shortest_edge`, then centre
    crop to `crop` (width, height) if set; then x * scale, minus mean, over std, per channel."""

    resample: int
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: tuple[int, int] | None = None
    shortest_edge: int | None = None
    crop: tuple[int, int] | None = None

    @classmethod
    def of_processor(cls, processor: Any) -> ImagePlan | None:
        """The plan a transformers image processor follows, or None when it does anything else."""
        backend = next((c for c in type(processor).__mro__ if c.__name__ in _STANDARD_BACKENDS), None)
        if backend is None or any(getattr(type(processor), s) is not getattr(backend, s) for s in _STEPS):
            return None  # a processor with steps of its own
        if getattr(processor, "do_pad", None) or not processor.do_resize:
            return None
        mean, std = processor.image_mean, processor.image_std
        if not processor.do_normalize:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if not (isinstance(mean, Sequence) and isinstance(std, Sequence) and len(mean) == len(std) == 3):
            return None
        size = processor.size
        plan = {"shortest_edge": size.shortest_edge} if size.shortest_edge else None
        if size.height and size.width and not (size.shortest_edge or size.longest_edge):
            plan = {"size": (size.width, size.height)}
        if plan is None or size.longest_edge or size.max_height or size.max_width:
            return None
        crop = None
        if processor.do_center_crop:
            crop = (processor.crop_size.width, processor.crop_size.height)
        return cls(
            resample=int(processor.resample if processor.resample is not None else Image.Resampling.BILINEAR),
            scale=float(processor.rescale_factor) if processor.do_rescale else 1.0,
            mean=(float(mean[0]), float(mean[1]), float(mean[2])),
            std=(float(std[0]), float(std[1]), float(std[2])),
            crop=crop,
            **plan,
        )

    def resized(self, width: int, height: int) -> tuple[int, int]:
        """The size an image of `width` x `height` is resized to (as the processor computes it)."""
        if self.size is not None:
            return self.size
        assert self.shortest_edge is not None
        if width <= height:
            return self.shortest_edge, int(self.shortest_edge * height / width)
        return int(self.shortest_edge * width / height), self.shortest_edge

    def draft(self, image: Image.Image) -> None:
        """Before decoding: let a JPEG decode at the smallest DCT scale that still covers the resize."""
        if image.format == "JPEG":
            image.draft("RGB", self.resized(*image.size))

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """One decoded image as the model's uint8 input, (1, 3, height, width)."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")  # convert() would copy it
        image = rgb.resize(self.resized(*image.size), Image.Resampling(self.resample))
        if self.crop is not None:
            width, height = self.crop
            left, top = (image.width - width) // 2, (image.height - height) // 2
            image = image.crop((left, top, left + width, top + height))
        array = np.array(image, dtype=np.uint8)  # a writable copy: torch shares it
        return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


class Normalizer:
    """The plan's rescale and normalise, on the device, in the model's dtype, for a whole batch."""

    def __init__(self, plan: ImagePlan, device: torch.device, dtype: torch.dtype) -> None:
        std = torch.tensor(plan.std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(plan.mean, dtype=torch.float32).view(1, 3, 1, 1)
        # (x * scale - mean) / std == x * (scale / std) - mean / std: one multiply-add
        self.multiply = (plan.scale / std).to(device, dtype)
        self.subtract = (mean / std).to(device, dtype)
        self.device = device
        self.dtype = dtype
        # a GPU's copies run on a stream of their own, so that they overlap another batch's forward
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None  # type: ignore[no-untyped-call]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) on the CPU or the device -> normalised (N, 3, H, W) on the device."""
        if self.copy_stream is not None and batch.device.type == "cpu":
            batch = batch.pin_memory()  # so that the copy does not wait on the host
            with torch.cuda.stream(self.copy_stream):
                on_device = batch.to(self.device, non_blocking=True)
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self.copy_stream)  # the forward pass starts once its pixels are there
            on_device.record_stream(compute)  # its memory is not reused while the forward reads it
        else:
            on_device = batch.to(self.device, non_blocking=True)
        return torch.addcmul(-self.subtract, on_device.to(self.dtype), self.multiply)
