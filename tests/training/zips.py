"""Dataset zips built in tests: image-folder layouts, and the malformed ones uploads must refuse."""

from __future__ import annotations

import io
import random
import stat
import struct
import zipfile
import zlib

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


def zero_bomb(
    size: int = 10**9, name: str = "red/bomb.png", *, step: int = 10**6, declared: int | None = None
) -> bytes:
    """A valid zip of about size/1000 bytes holding one deflated entry of `size` zero bytes (a
    multiple of `step`), whose headers say it holds `declared` bytes (default: the truth). Built
    from one deflate block repeated, in well under a second: zipfile would take seconds to
    compress a gigabyte."""
    assert size % step == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(step)) + compressor.flush(zlib.Z_FULL_FLUSH)
    data = block * (size // step) + compressor.flush(zlib.Z_FINISH)
    crc = 0
    zeros = bytes(step)
    for _ in range(size // step):
        crc = zlib.crc32(zeros, crc)
    encoded = name.encode()
    # version 20, no flags, deflate, 1980-01-01 00:00, crc, compressed and uncompressed sizes
    fields = struct.pack(
        "<HHHHHIII", 20, 0, 8, 0, 0x21, crc, len(data), size if declared is None else declared
    )
    local = b"PK\x03\x04" + fields + struct.pack("<HH", len(encoded), 0) + encoded
    central = (
        b"PK\x01\x02"
        + struct.pack("<H", 20)
        + fields
        + struct.pack("<HHHHHII", len(encoded), 0, 0, 0, 0, 0o644 << 16, 0)
        + encoded
    )
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    return local + data + central + end
