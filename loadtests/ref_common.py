"""The model code both reference servers share, so that they do exactly what the gateway does:
PIL decode + `.convert("RGB")`, the saved transformers image processor, one forward pass per batch
under `torch.inference_mode` (float32 on the CPU unless asked otherwise), softmax and the top 5
classes of each input."""

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
    # where the model runs (LitServe reads these; the GPU check runs it on the GPU, in float16)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda:N")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    return parser.parse_args()


class ViTClassifier:
    """A saved transformers image classifier: preprocess one JPEG, predict a batch, top-5 per input."""

    def __init__(self, folder: str | Path, device: str = "cpu", dtype: str = "float32") -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.processor = AutoImageProcessor.from_pretrained(folder)  # type: ignore[no-untyped-call]
        self.device, self.dtype = torch.device(device), getattr(torch, dtype)
        model = AutoModelForImageClassification.from_pretrained(folder)
        self.model = model.to(self.device, self.dtype).eval()
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
        pixels = torch.cat(features).to(self.device, self.dtype)
        scores = self.model(pixel_values=pixels).logits.float().softmax(dim=-1)
        values, indices = scores.topk(min(TOP_K, scores.shape[-1]), dim=-1)
        return [
            [{"label": self.labels[i], "score": round(v, 6)} for v, i in zip(row_v, row_i, strict=True)]
            for row_v, row_i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
