"""`text-classification`: texts -> labels with scores, best first (the pipeline's scoring:
softmax over the classes, or a sigmoid per class for multi-label and one-logit models), the
whole batch tokenised together and run in one forward pass."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from service.serving.runtime.base import InputKind, ModelAdapter, Output, top_k_classes


class TextClassificationAdapter(ModelAdapter):
    input_kind: ClassVar[InputKind] = "text"
    output_key = "predictions"

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(device, dtype)
        self.pipe = pipe
        config = pipe.model.config
        self.labels = [str(config.id2label[i]) for i in range(len(config.id2label))]
        self.multi_label = self.is_multi_label(len(self.labels))

    def is_multi_label(self, labels: int) -> bool:
        """Whether a head of `labels` classes over this model scores with a sigmoid per class."""
        return bool(self.pipe.model.config.problem_type == "multi_label_classification" or labels == 1)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def preprocess(self, item: str) -> str:
        return item  # tokenised per batch, so that padding fits the batch's longest input

    def logits(self, features: list[str]) -> torch.Tensor:
        """One forward pass: the batch's logits, one row per input."""
        encoded = self.pipe.tokenizer(features, padding=True, truncation=True, return_tensors="pt")
        logits: torch.Tensor = self.pipe.model(**encoded.to(self.device)).logits
        return logits

    @torch.inference_mode()
    def predict(self, features: list[str], *, top_k: int) -> list[Output]:
        logits = self.logits(features)
        return list(top_k_classes(logits, self.labels, top_k=top_k, multi_label=self.multi_label))

    def warmup_input(self) -> str:
        return "warm-up"
