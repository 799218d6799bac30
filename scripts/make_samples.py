#!/usr/bin/env python
"""Write the sample inputs in `samples/` that the README and docs/ use, byte for byte the same
on every run (needs the test extras: scikit-image and scikit-learn):

- `cat.jpg`: scikit-image's `chelsea` (a real cat photo, CC0), as a small JPEG;
- `three.png`, `seven.png`: the first held-out 3 and 7 of scikit-learn's digits (never trained on
  by `digits-vit`), rendered as the digits model was trained (`digit_to_image`: 32x32 RGB);
- `digits.zip`: a fine-tuning set in image-folder layout, `<digit>/<n>.png`, with the first
  PER_LABEL training digits of each class, rendered the same way.

    .venv/bin/python scripts/make_samples.py [--out samples]
"""

from __future__ import annotations

import argparse
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.data import chelsea
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from train_digits_vit import digit_to_image  # this folder's training script: the one rendering

PER_LABEL = 40  # 400 images: enough for a fine-tune that takes seconds, small enough to ship
JPEG_QUALITY = 80
ZIP_TIME = (2026, 1, 1, 0, 0, 0)  # fixed entry times, so the zip's bytes never change


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def cat_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(chelsea()).save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits model's own split: stratified 20 % held out, `random_state=0`."""
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    return x_train, x_test, y_train, y_test


def held_out_digit(x_test: np.ndarray, y_test: np.ndarray, digit: int) -> bytes:
    first = int(np.flatnonzero(y_test == digit)[0])
    return png(digit_to_image(x_test[first]))


def digits_zip(x_train: np.ndarray, y_train: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for digit in range(10):
            for n in np.flatnonzero(y_train == digit)[:PER_LABEL]:
                entry = zipfile.ZipInfo(f"{digit}/{int(n)}.png", date_time=ZIP_TIME)
                entry.compress_type = zipfile.ZIP_DEFLATED
                entry.external_attr = 0o644 << 16
                archive.writestr(entry, png(digit_to_image(x_train[n])))
    return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "samples")
    out: Path = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    x_train, x_test, y_train, y_test = split()
    files = {
        "cat.jpg": cat_jpeg(),
        "three.png": held_out_digit(x_test, y_test, 3),
        "seven.png": held_out_digit(x_test, y_test, 7),
        "digits.zip": digits_zip(x_train, y_train),
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
        print(f"{out / name}: {len(data):,} bytes")


if __name__ == "__main__":
    main()
