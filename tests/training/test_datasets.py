"""Dataset zips: the valid layouts are summarised, every malformed case gets its own 422 message."""

from __future__ import annotations

import dataclasses
import io
import zipfile

import pytest
from PIL import Image

from service.errors import InvalidInput
from service.serving.inputs import ImageLimits
from service.training.datasets import DatasetLimits, check_dataset, read_entry, split_validation
from tests.training.zips import COLOURS, build_zip, colour_dataset, png, zero_bomb

LIMITS = DatasetLimits(
    max_files=100,
    max_uncompressed_bytes=2_000_000,
    max_image_bytes=1_000_000,
    image=ImageLimits(max_pixels=100_000, max_aspect_ratio=32),
    min_images_per_label=3,
)


def good(extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    entries = {f"{label}/{i}.png": png(COLOURS[label], i) for label in ("red", "blue") for i in range(3)}
    return {**entries, **(extra or {})}


def refused(data: bytes, limits: DatasetLimits = LIMITS) -> str:
    with pytest.raises(InvalidInput) as caught:
        check_dataset(data, limits)
    return caught.value.message


def test_image_folder_layout_is_summarised() -> None:
    summary = check_dataset(colour_dataset(per_label=4), LIMITS).summary()
    assert summary == {
        "kind": "images",
        "format": "zip",
        "labels": ["blue", "red"],
        "train": {"blue": 4, "red": 4},
        "validation": {},
        "examples": 8,
        "images": 8,  # the count's first name, kept
    }


def test_train_and_validation_folders_are_splits() -> None:
    entries = {f"train/{k}": v for k, v in good().items()}
    entries["validation/red/v.png"] = png(COLOURS["red"], 99)
    entries["__MACOSX/._junk"] = b"resource fork"  # ignored, like .DS_Store
    summary = check_dataset(build_zip(entries), LIMITS).summary()
    assert summary["train"] == {"blue": 3, "red": 3}
    assert summary["validation"] == {"red": 1}


def test_not_a_zip() -> None:
    assert "not a zip archive" in refused(b"this is plain text, not a zip")


def test_one_label() -> None:
    data = build_zip({f"red/{i}.png": png(COLOURS["red"], i) for i in range(5)})
    assert refused(data) == "a classifier needs at least two labels (folders); found only 'red'"


def test_too_few_images_per_label() -> None:
    entries = good()
    del entries["blue/2.png"]
    assert refused(build_zip(entries)) == "every label needs at least 3 training images: 'blue' has 2"


def test_corrupt_image() -> None:
    message = refused(build_zip(good({"red/bad.png": b"\x89PNG\r\n\x1a\nnot really"})))
    assert message.startswith("entry 'red/bad.png': ")


def test_zip_slip() -> None:
    message = refused(build_zip(good({"red/../../evil.png": png((0, 0, 0))})))
    assert message == "entry 'red/../../evil.png': '..' would escape the dataset folder (zip-slip)"


@pytest.mark.parametrize("name", ["/etc/red/a.png", "C:/red/a.png"])
def test_absolute_path(name: str) -> None:
    assert (
        refused(build_zip(good({name: png((0, 0, 0))}))) == f"entry {name!r}: absolute paths are not allowed"
    )


def test_backslash() -> None:
    message = refused(build_zip(good({"red\\a.png": png((0, 0, 0))})))
    assert "backslashes are not allowed" in message


def test_symlink_entry() -> None:
    data = build_zip(good({"red/link.png": b"/etc/passwd"}), symlinks=("red/link.png",))
    assert refused(data) == "entry 'red/link.png': symbolic links are not allowed"


def test_wrong_layout() -> None:
    message = refused(build_zip(good({"loose.png": png((0, 0, 0))})))
    assert message == "entry 'loose.png': not in the image-folder layout (expected <label>/<image>)"


def test_too_many_entries() -> None:
    limits = dataclasses.replace(LIMITS, max_files=5, min_images_per_label=1)
    assert refused(build_zip(good()), limits) == "the zip has 6 entries; the limit is 5"


def test_zip_bomb_uncompressed_total() -> None:
    data = build_zip(good({"red/zeros.png": b"\0" * 3_000_000}))  # deflates to a few kB
    assert len(data) < 100_000
    assert refused(data).startswith("the zip unpacks to ")


def test_one_entry_over_its_limit_is_refused_from_the_directory() -> None:
    # 1 MB + 1 of zeros, under the 2 MB total: refused before any image is read (the first
    # entries are fine; the order in the zip does not matter)
    data = build_zip(good({"red/zeros.png": b"\0" * 1_000_001}))
    assert (
        refused(data) == "entry 'red/zeros.png' unpacks to 1000001 bytes; the limit for one image is 1000000"
    )


def test_a_gigabyte_entry_is_refused_without_being_decompressed() -> None:
    # were it decompressed, this would take seconds and a gigabyte (test_memory_bounds measures it)
    limits = dataclasses.replace(LIMITS, max_uncompressed_bytes=2 * 10**9)
    assert refused(zero_bomb(10**9), limits) == (
        "entry 'red/bomb.png' unpacks to 1000000000 bytes; the limit for one image is 1000000"
    )


def test_an_entry_that_unpacks_to_more_than_its_directory_says_is_refused() -> None:
    # the directory says 1,000 bytes; the data inflates to 10 MB: reading stops at 1,000
    message = refused(zero_bomb(10**7, step=10**6, declared=1000))
    assert message.startswith("entry 'red/bomb.png': cannot be read from the zip (Bad CRC-32")


def test_an_entry_is_read_whole_in_chunks() -> None:
    honest = zipfile.ZipFile(io.BytesIO(zero_bomb(10**7, step=10**6)))
    assert read_entry(honest, honest.infolist()[0], 10**7) == bytes(10**7)


@pytest.mark.parametrize(("method", "name"), [(zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "LZMA")])
def test_entries_that_decompress_in_unbounded_steps_are_refused(method: int, name: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for entry, data in good().items():
            archive.writestr(
                entry, data, compress_type=method if entry == "red/1.png" else zipfile.ZIP_STORED
            )
    assert refused(buffer.getvalue()) == (
        f"entry 'red/1.png': compression method {method} is not supported (use deflate)"
    ), name


def test_too_many_pixels() -> None:
    big = png((10, 10, 10), size=400)  # 160,000 pixels > 100,000
    message = refused(build_zip(good({"red/big.png": big})))
    assert message.startswith("entry 'red/big.png': image is 400x400")


def test_validation_split_is_stratified_and_seeded() -> None:
    dataset = check_dataset(colour_dataset(per_label=10), LIMITS)
    train, validation = split_validation(dataset.train, 0.2, seed=1)
    assert sorted(e.label for e in validation) == ["blue", "blue", "red", "red"]
    assert len(train) == 16
    again = split_validation(dataset.train, 0.2, seed=1)[1]
    assert [e.entry for e in again] == [e.entry for e in validation]


def test_too_thin_images_are_refused() -> None:
    thin = Image.new("RGB", (1, 40))
    buffer = io.BytesIO()
    thin.save(buffer, format="PNG")
    message = refused(build_zip(good({"red/thin.png": buffer.getvalue()})))
    assert message == "entry 'red/thin.png': image is 1x40, an aspect ratio of 40 to 1; the limit is 32 to 1"
