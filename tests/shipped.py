"""Real labelled images for tests: held-out scikit-learn digits, rendered the way the shipped
digits model was trained (the training script's own `digit_to_image`)."""

from __future__ import annotations

import importlib.util
import io
from types import ModuleType

from tests.conftest import REPO


def training_script() -> ModuleType:
    path = REPO / "scripts" / "train_digits_vit.py"
    spec = importlib.util.spec_from_file_location("train_digits_vit", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
