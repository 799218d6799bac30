"""Real PEFT LoRA adapters built in a moment: the trainer's own LoRA wrapping (query/value layers,
the classifier head saved in full) over a saved classifier, with seeded random low-rank weights
(PEFT starts B at zero: an untrained adapter would change nothing) and a new head for `labels`,
saved as a LoRA fine-tuning job saves its result."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from service.training.trainer import LABELS, Hyperparameters, load_base, with_lora


def save_lora_adapter(
    base: Path,
    folder: Path,
    labels: list[str],
    *,
    seed: int,
    rank: int = 4,
    task: str = "image-classification",
    strength: float = 0.3,
) -> Path:
    """An adapter of `base` for `labels` (rank `rank`, weights drawn from `seed`) saved in `folder`."""
    torch.manual_seed(seed)
    model, processor = load_base(base, labels, task)
    peft_model = with_lora(model, Hyperparameters(epochs=1, learning_rate=0.0, batch_size=1, lora_rank=rank))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn_like(parameter) * strength)
    peft_model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / LABELS).write_text(json.dumps(labels), encoding="utf-8")
    return folder
