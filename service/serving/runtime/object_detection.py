"""`object-detection` (DETR, YOLOS, RT-DETR, ...): images -> boxes `{label, score, box: {xmin, ymin,
xmax, ymax}}` in each image's own pixels, best first, those scoring above the request's
`threshold` (default 0.5, as the pipeline's).

Each image is resized by the model's processor on a worker thread, keeping its original size; a
batch is padded (bottom and right, with a pixel mask where the model reads one, as the
processor pads a batch) and run in one forward pass; each image's boxes are then scaled back to
its original size by the pipeline's own postprocessing."""

from __future__ import annotations

from typing import ClassVar

import torch

from service.serving.runtime.base import Output, WithParams
from service.serving.runtime.original_size import OriginalSizeAdapter, Resized

DEFAULT_THRESHOLD = 0.5  # the pipeline's


class ObjectDetectionAdapter(OriginalSizeAdapter):
    output_key = "detections"
    reads_params: ClassVar[frozenset[str]] = frozenset({"threshold"})

    @torch.inference_mode()
    def predict(self, features: list[WithParams], *, top_k: int) -> list[Output]:
        images: list[Resized] = [f.features for f in features]
        found = self.pipe.model(**self.padded(images).inputs)
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
