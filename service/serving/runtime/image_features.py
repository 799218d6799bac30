"""`image-feature-extraction`: images -> one embedding vector each (the patch tokens' mean, or the
first (CLS) token's, L2-normed unless the manifest says `normalize: false`), the batch in one
forward pass; images are read and preprocessed like an image classifier's."""

from __future__ import annotations

from typing import Any

import torch

from service.serving.runtime.base import Output, pooled
from service.serving.runtime.images import ImageAdapter


class ImageFeatureExtractionAdapter(ImageAdapter):
    output_key = "embeddings"

    def __init__(
        self,
        pipe: Any,
        device: torch.device,
        dtype: torch.dtype,
        *,
        fast: bool = True,
        pooling: str,
        normalize: bool,
    ) -> None:
        super().__init__(pipe, device, dtype, fast=fast)
        self.pooling = pooling
        self.normalize = normalize

    @property
    def embedding_size(self) -> int | None:
        size = getattr(self.pipe.model.config, "hidden_size", None)
        return int(size) if size is not None else None

    def model_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.pipe.model(pixel_values=pixels).last_hidden_state
        return hidden

    @torch.inference_mode()
    def predict(self, features: list[torch.Tensor], *, top_k: int) -> list[Output]:
        hidden = self.forward(self.pixel_batch(features))
        if hidden.dim() == 4:  # a convolutional model's (N, C, H, W) map: its H*W positions are the tokens
            hidden = hidden.flatten(2).transpose(1, 2)
        return list(pooled(hidden, None, pooling=self.pooling, normalize=self.normalize))
