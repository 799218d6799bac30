"""Real labelled images for tests: held-out scikit-learn digits, rendered the way the shipped
digits model was trained (the training script's own `digit_to_image`)."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from types import ModuleType

from tests.conftest import REPO


def training_script() -> ModuleType:
    path = REPO / "scripts" / "train_digits_vit.py"
    spec = importlib.util.spec_from_file_location("train_digits_vit", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_untrained_digits_vit(folder: Path) -> Path:
    """The digits model's architecture and image processor with random weights (seed 0) and two
    labels of another task (cat, dog), saved like a hub model: a base that knows no digits."""
    import torch
    from transformers import ViTForImageClassification

    script = training_script()
    torch.manual_seed(0)
    config = script.make_model_config()
    config.id2label, config.label2id = {0: "cat", 1: "dog"}, {"cat": 0, "dog": 1}
    ViTForImageClassification(config).save_pretrained(folder)
    script.make_image_processor().save_pretrained(folder)
    return folder


def digit_images(count: int) -> tuple[list[bytes], list[int]]:
    """`count` held-out digits (never trained on) as PNG bytes, with their true labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    script = training_script()
    digits = load_digits()
    _, x_test, _, y_test = train_test_split(
        digits.images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    images: list[bytes] = []
    for pixels in x_test[:count]:
        buffer = io.BytesIO()
        script.digit_to_image(pixels).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images, [int(y) for y in y_test[:count]]
