"""`object-detection` (DETR, YOLOS, RT-DETR, ...): images -> boxes `{label, score, box: {xmin, ymin,
xmax, ymax}}` in each image's own pixels, best first, those scoring above the request's
`threshold` (default 0.5, as the pipeline's).

Each image is resized by the model's processor on a worker thread, keeping its original size; a
batch is padded (bottom and right, with a pixel mask where the model reads one, as the
processor pads a batch) and run in one forward pass; each image's boxes are then scaled back to
its original size by the pipeline's own postprocessing."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image

from service.serving.runtime.base import InputKind, ModelAdapter, Output, TaskParams, WithParams
from service.serving.runtime.images import processor_resized_size

DEFAULT_THRESHOLD = 0.5  # the pipeline's


@dataclass(frozen=True)
class Resized:
    """One image as the model reads it, and the size (height, width) its boxes are scaled back to."""

    pixels: torch.Tensor  # (1, 3, h, w)
    original: tuple[int, int]


class ObjectDetectionAdapter(ModelAdapter):
    """Always the model's own image processor (detection processors resize to a size range and
    pad), on a thread: the original size travels with the pixels, which the preprocessing
    processes do not carry."""

    input_kind: ClassVar[InputKind] = "image"
    output_key = "detections"
    reads_params: ClassVar[frozenset[str]] = frozenset({"threshold"})

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(device, dtype)
        self.pipe = pipe
        self.masked = "pixel_mask" in inspect.signature(pipe.model.forward).parameters

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        return processor_resized_size(self.pipe.image_processor, width, height)

    def preprocess(self, item: Image.Image) -> Resized:
        pixels = self.pipe.image_processor(images=item, return_tensors="pt")["pixel_values"]
        return Resized(pixels, (item.height, item.width))

    @torch.inference_mode()
    def predict(self, features: list[WithParams], *, top_k: int) -> list[Output]:
        images: list[Resized] = [f.features for f in features]
        height = max(r.pixels.shape[-2] for r in images)
        width = max(r.pixels.shape[-1] for r in images)
        pixels = torch.zeros(len(images), 3, height, width)
        mask = torch.zeros(len(images), height, width, dtype=torch.long)
        for i, image in enumerate(images):
            h, w = image.pixels.shape[-2:]
            pixels[i, :, :h, :w] = image.pixels[0]
            mask[i, :h, :w] = 1
        inputs = {"pixel_values": pixels.to(self.device, self.dtype)}
        if self.masked:
            inputs["pixel_mask"] = mask.to(self.device)
        found = self.pipe.model(**inputs)
        outputs: list[Output] = []
        for i, (image, item) in enumerate(zip(images, features, strict=True)):
            # the shape the pipeline's postprocessing reads: the model's output class, built from a dict
            one = type(found)(
                {
                    "target_size": torch.tensor([image.original]),
                    "logits": found.logits[i : i + 1].float(),
                    "pred_boxes": found.pred_boxes[i : i + 1].float(),
                }
            )
            threshold = item.params.threshold
            boxes = self.pipe.postprocess(
                one, threshold=DEFAULT_THRESHOLD if threshold is None else threshold
            )
            boxes.sort(key=lambda b: -b["score"])
            outputs.append(
                [
                    {"label": str(b["label"]), "score": round(float(b["score"]), 6), "box": b["box"]}
                    for b in boxes
                ]
            )
        return outputs

    def warmup_input(self) -> Image.Image:
        return Image.new("RGB", (224, 224), (127, 127, 127))

    def warmup(self) -> None:
        self.predict([WithParams(self.preprocess(self.warmup_input()), TaskParams())], top_k=1)
