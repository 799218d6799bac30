"""JPEGs decoded on the GPU (nvJPEG, through torchvision's `decode_jpeg`) for the fast image path.

Optional: only when torchvision is installed (the `gpu` extra) and the replica is on a CUDA
device. The gateway's checks do not change: the header is read on the CPU first, and every limit
(pixels, aspect ratio, the resized size) applies from it exactly as for a CPU decode. A JPEG that
passes stays encoded: its bytes go to the device with the batch, are decoded there in one call for
the batch, resized (antialiased, as Pillow does) and centre-cropped as uint8, then normalised with
the rest of the batch. Anything else decodes on the CPU as before: PNGs and the other formats,
progressive and CMYK JPEGs, a JPEG that does not end with its end-of-image marker (truncated: the
CPU decode answers it with its 400), and plans whose resampling has no GPU equivalent.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from service.errors import InvalidInput
from service.serving.runtime.fast_images import ImagePlan

# Pillow's resampling filter -> torch's interpolation mode (antialiased when shrinking, as Pillow)
_MODES = {
    int(Image.Resampling.BILINEAR): "bilinear",
    int(Image.Resampling.BICUBIC): "bicubic",
    int(Image.Resampling.NEAREST): "nearest-exact",
}
_END_OF_IMAGE = b"\xff\xd9"

Decode = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


@dataclass(frozen=True)
class EncodedJpeg:
    """One input's JPEG whose header passed the gateway's checks, left for the device to decode."""

    data: torch.Tensor  # the file's bytes, uint8, one dimension
    index: int  # the input's place in its request, for an error that names it


def torchvision_decode(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """nvJPEG's batched decode: each (3, H, W) uint8 on `device`."""
    from torchvision.io import ImageReadMode, decode_jpeg

    decoded: list[torch.Tensor] = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    return decoded


def device_decoder(
    plan: ImagePlan | None, device: torch.device, *, wanted: bool
) -> tuple[JpegDecoder | None, str]:
    """A decoder for `plan` on `device` where the manifest asks for one (`wanted`), or None; and
    why, for the load log."""
    if plan is None:
        return None, "the model's own image processor decodes on the CPU"
    if not wanted:
        return None, "JPEGs decoded on the CPU (gpu_jpeg_decode: true in the manifest decodes them on a GPU)"
    if device.type != "cuda":
        return None, "JPEGs decoded on the CPU (GPU decode needs a CUDA device)"
    if importlib.util.find_spec("torchvision") is None:
        return None, "JPEGs decoded on the CPU (GPU decode needs torchvision: the `gpu` extra)"
    if plan.resample not in _MODES:
        return None, f"JPEGs decoded on the CPU (Pillow resampling {plan.resample} has no GPU equivalent)"
    return JpegDecoder(plan, device, torchvision_decode), "JPEGs decoded on the GPU (nvJPEG)"


class JpegDecoder:
    """Decodes a batch's still-encoded JPEGs on the device into the plan's uint8 pixels."""

    def __init__(self, plan: ImagePlan, device: torch.device, decode: Decode) -> None:
        self.plan = plan
        self.device = device
        self.decode = decode
        self.mode = _MODES[plan.resample]

    @staticmethod
    def accepts(image: Image.Image, data: bytes) -> bool:
        """Whether this header-checked image may be decoded on the device (else on the CPU)."""
        return (
            image.format == "JPEG"
            and image.mode in ("RGB", "L")
            and "progressive" not in image.info
            and data.rstrip(b"\0").endswith(_END_OF_IMAGE)
        )

    @staticmethod
    def encoded(data: bytes, index: int) -> EncodedJpeg:
        return EncodedJpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), index)

    def batch(self, features: Sequence[Any]) -> list[torch.Tensor]:
        """Each feature as (1, 3, h, w) uint8 on the device: encoded JPEGs decoded there (all in
        one call), CPU pixels copied there."""
        jpegs = [f for f in features if isinstance(f, EncodedJpeg)]
        decoded = iter(self._decode(jpegs))
        return [
            self.resize_crop(next(decoded))
            if isinstance(f, EncodedJpeg)
            else f.to(self.device, non_blocking=True)
            for f in features
        ]

    def _decode(self, jpegs: list[EncodedJpeg]) -> list[torch.Tensor]:
        if not jpegs:
            return []
        try:
            return self.decode([j.data for j in jpegs], self.device)
        except RuntimeError:
            if len(jpegs) == 1:
                raise InvalidInput(f"input {jpegs[0].index}: image is truncated or corrupt") from None
            # find the corrupt one: decoding each alone fails only its own request
            return [image for jpeg in jpegs for image in self._decode([jpeg])]

    def resize_crop(self, image: torch.Tensor) -> torch.Tensor:
        """A decoded (3, H, W) uint8 image resized and cropped as the plan says: (1, 3, h, w) uint8."""
        height, width = image.shape[-2:]
        new_width, new_height = self.plan.resized(width, height)
        pixels = image.unsqueeze(0)
        if (new_width, new_height) != (width, height):
            antialias = self.mode != "nearest-exact"
            resized = torch.nn.functional.interpolate(
                pixels.float(), size=(new_height, new_width), mode=self.mode, antialias=antialias
            )
            pixels = resized.round_().clamp_(0, 255).to(torch.uint8)
        if self.plan.crop is not None:
            crop_width, crop_height = self.plan.crop
            left, top = (new_width - crop_width) // 2, (new_height - crop_height) // 2
            # negative padding crops; positive pads with black where the crop is the larger, as Pillow
            edges = (-left, left + crop_width - new_width, -top, top + crop_height - new_height)
            pixels = torch.nn.functional.pad(pixels, edges)
        return pixels.contiguous()
