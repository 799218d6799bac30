"""The model code both reference servers share, so that they do exactly what the gateway does:
PIL decode + `.convert("RGB")`, the saved transformers image processor, one float32 forward pass
per batch under `torch.inference_mode`, softmax and the top 5 classes of each input."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image

TOP_K = 5


def server_args(doc: str) -> argparse.Namespace:
    """The options both reference servers take from the benchmark: model folder, port, batching."""
    parser = argparse.ArgumentParser(description=doc.split("\n", 1)[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    return parser.parse_args()


class ViTClassifier:
    """A saved transformers image classifier: preprocess one JPEG, predict a batch, top-5 per input."""

    def __init__(self, folder: str | Path) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.processor = AutoImageProcessor.from_pretrained(folder)  # type: ignore[no-untyped-call]
        self.model = AutoModelForImageClassification.from_pretrained(folder).eval()
        config = self.model.config
        self.labels = [str(config.id2label[i]) for i in range(len(config.id2label))]

    def preprocess(self, jpeg: bytes) -> torch.Tensor:
        image = Image.open(io.BytesIO(jpeg))
        image.load()
        pixels: torch.Tensor = self.processor(images=image.convert("RGB"), return_tensors="pt")[
            "pixel_values"
        ]
        return pixels

    @torch.inference_mode()
    def predict(self, features: list[torch.Tensor]) -> list[list[dict[str, Any]]]:
        scores = self.model(pixel_values=torch.cat(features)).logits.float().softmax(dim=-1)
        values, indices = scores.topk(min(TOP_K, scores.shape[-1]), dim=-1)
        return [
            [{"label": self.labels[i], "score": round(v, 6)} for v, i in zip(row_v, row_i, strict=True)]
            for row_v, row_i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
