"""`image-segmentation` (semantic: SegFormer, UperNet, ...; instance and panoptic: Mask2Former,
MaskFormer, DETR, ...): images -> segments `{label, score, mask}`, each mask a COCO run-length
encoding (service/serving/runtime/rle.py) in the original image's size.

Images are resized by the model's processor on a worker thread and padded into one forward pass
(service/serving/runtime/original_size.py); each image's share of the model's outputs is cut out
of the padding and given to the pipeline's own postprocessing, which scales the masks back to the
original size: panoptic where the processor has it, else instance, else semantic, as the pipeline
picks. Semantic segments are every class present (score null, as the pipeline gives them), in
class order, and cover each pixel once; instance and panoptic segments are those scoring above the
request's `threshold` (default 0.9, the pipeline's), best first."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from service.serving.runtime import rle
from service.serving.runtime.base import Output, WithParams
from service.serving.runtime.original_size import OriginalSizeAdapter, Resized

DEFAULT_THRESHOLD = 0.9  # the pipeline's


class ImageSegmentationAdapter(OriginalSizeAdapter):
    output_key = "segments"
    reads_params: ClassVar[frozenset[str]] = frozenset({"threshold"})

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype) -> None:
        if pipe.model.config.model_type == "oneformer":
            raise ValueError("OneFormer reads a task prompt per image, which the gateway does not send")
        super().__init__(pipe, device, dtype)

    @torch.inference_mode()
    def predict(self, features: list[WithParams], *, top_k: int) -> list[Output]:
        images: list[Resized] = [f.features for f in features]
        batch = self.padded(images)
        found = self.pipe.model(**batch.inputs)
        padded_size = batch.inputs["pixel_values"].shape[-2:]
        outputs: list[Output] = []
        for i, (image, item) in enumerate(zip(images, features, strict=True)):
            one = type(found)(own_outputs(found, i, len(images), batch.sizes[i], padded_size))
            one["target_size"] = [image.original]
            threshold = item.params.threshold
            found_segments = self.pipe.postprocess(
                one, threshold=DEFAULT_THRESHOLD if threshold is None else threshold
            )
            segments: list[dict[str, Any]] = [
                {
                    "label": str(s["label"]),
                    "score": None if s["score"] is None else round(float(s["score"]), 6),
                    "mask": rle.encode(np.asarray(s["mask"])),
                }
                for s in found_segments
            ]
            segments.sort(key=lambda s: 0.0 if s["score"] is None else -s["score"])
            outputs.append(segments)
        return outputs


def own_outputs(
    found: Any, index: int, count: int, size: tuple[int, int], padded_size: torch.Size
) -> dict[str, torch.Tensor]:
    """Image `index`'s rows of a batch's outputs (in float32), its maps (the 4-D outputs: logits or
    mask logits over the padded pixels, at their own resolution) cut to the part of the padded
    batch that is the image's: the postprocessing scales the whole map to the original size."""
    mine: dict[str, torch.Tensor] = {}
    for key, value in found.items():
        if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != count:
            continue
        row = value[index : index + 1].float()
        if row.ndim == 4:
            rows = math.ceil(size[0] * row.shape[-2] / padded_size[0])
            columns = math.ceil(size[1] * row.shape[-1] / padded_size[1])
            row = row[..., :rows, :columns]
        mine[key] = row
    return mine
