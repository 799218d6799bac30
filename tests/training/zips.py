"""Dataset zips built in tests: image-folder layouts, and the malformed ones uploads must refuse."""

from __future__ import annotations

import io
import random
import stat
import zipfile

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def png(colour: tuple[int, int, int], seed: int = 0, size: int = 16) -> bytes:
    """A noisy solid-colour image: easy to learn, never two alike."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size))
    image.putdata(
        [tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in colour) for _ in range(size * size)]
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def build_zip(entries: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in symlinks:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def colour_dataset(per_label: int = 8, labels: tuple[str, ...] = ("red", "blue"), prefix: str = "") -> bytes:
    return build_zip(
        {
            f"{prefix}{label}/{i}.png": png(COLOURS[label], seed=hash((label, i)) % 10_000)
            for label in labels
            for i in range(per_label)
        }
    )
