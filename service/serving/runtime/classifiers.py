"""The transformers classes behind the classification tasks a model can be fine-tuned (and
LoRA-adapted) for: the model class with a classifier head, and what prepares its inputs (an image
processor, or a tokenizer). The trainer and the LoRA loader both build models through here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CLASSIFIER_TASKS = ("image-classification", "text-classification")


def classifier_class(task: str) -> Any:
    """The Auto model class of `task` (one of CLASSIFIER_TASKS)."""
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    if task == "text-classification":
        return AutoModelForSequenceClassification
    return AutoModelForImageClassification


def load_classifier(task: str, location: str | Path, labels: list[str], *, local_files_only: bool) -> Any:
    """The model at `location` with a new classifier head for `labels` (its own head when the
    label set matches), in float32."""
    return classifier_class(task).from_pretrained(
        location,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,  # the head is new: its shape follows the new label set
        local_files_only=local_files_only,
        dtype=torch.float32,  # trained in float32 whatever the checkpoint holds (and see LOAD_DTYPE)
    )


def load_preprocessor(task: str, folder: str | Path) -> Any:
    """The image processor (images) or tokenizer (text) saved in `folder`."""
    from transformers import AutoImageProcessor, AutoTokenizer

    if task == "text-classification":
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return AutoImageProcessor.from_pretrained(folder, local_files_only=True)


def encode(task: str, preprocessor: Any, config: Any, inputs: list[Any]) -> dict[str, torch.Tensor]:
    """The model's keyword inputs for all of `inputs` at once, as tensors with one row per input:
    pixel values (in chunks, to bound the processor's working memory) or token ids, padded to
    the longest text and cut at what the model's positions allow."""
    if not inputs:
        return {}
    if task == "text-classification":
        longest = min(preprocessor.model_max_length, getattr(config, "max_position_embeddings", 512))
        encoded = preprocessor(inputs, padding=True, truncation=True, max_length=longest, return_tensors="pt")
        return {name: value for name, value in encoded.items() if isinstance(value, torch.Tensor)}
    chunks = [
        preprocessor(images=inputs[i : i + 256], return_tensors="pt")["pixel_values"]
        for i in range(0, len(inputs), 256)
    ]
    return {"pixel_values": torch.cat(chunks) if chunks else torch.empty(0)}
