"""Dataset zips in image-folder layout: checked once at upload, read again by the trainer.

Layout: `<label>/<image>`, or `train/<label>/<image>` plus `validation/<label>/<image>`.
Nothing is ever extracted to disk: images are read from the zip by entry name, so a hostile
name cannot write anywhere; such names are refused anyway (zip-slip `..`, absolute paths,
drive letters, backslashes, symlink entries), as are zip bombs: the entry count, each entry's
and the total uncompressed size are checked from the zip's directory first, then each entry is
read in chunks and counted against its budget, never decompressed whole; only stored and
deflated entries are read (bzip2 and LZMA cannot be decompressed in bounded steps). Every
refusal is an `InvalidInput` (422) naming the entry and the problem.
"""

from __future__ import annotations

import io
import random
import re
import stat
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Generic, Protocol, TypeVar

from PIL import Image

from service.errors import GatewayError, InvalidInput
from service.serving.inputs import ImageLimits, RawInput, decode_image
from service.settings import Settings

SPLITS = ("train", "validation")
COMPRESSIONS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
CHUNK_BYTES = 1024 * 1024  # what one read of an entry may decompress
IGNORED = re.compile(r"(^|/)(__MACOSX/|\.)")  # macOS resource forks, .DS_Store and other dot files
DRIVE = re.compile(r"^[A-Za-z]:")
MAX_LABEL_CHARS = 64


@dataclass(frozen=True)
class DatasetLimits:
    max_files: int
    max_uncompressed_bytes: int  # all entries together
    max_image_bytes: int  # one entry, uncompressed
    image: ImageLimits
    min_images_per_label: int  # and examples per label, for text datasets
    max_text_chars: int = 10_000  # text datasets: one example's text

    @classmethod
    def of(cls, settings: Settings) -> DatasetLimits:
        return cls(
            max_files=settings.max_dataset_files,
            max_uncompressed_bytes=settings.max_dataset_uncompressed_bytes,
            max_image_bytes=settings.max_dataset_image_bytes,
            image=ImageLimits.of(settings),
            min_images_per_label=settings.min_images_per_label,
            max_text_chars=settings.max_text_chars,
        )


class Labelled(Protocol):
    """One example of a dataset: where it is in its file, and its label."""

    @property
    def entry(self) -> str: ...

    @property
    def label(self) -> str: ...


@dataclass
class Example:
    entry: str  # the zip entry name
    label: str


E = TypeVar("E", bound=Labelled)


@dataclass
class Dataset(Generic[E]):
    """The examples of a checked file, by split; `validation` is empty when the file has no split.
    `kind`: `images` (a zip in image-folder layout) or `text` (JSONL or CSV of text,label)."""

    train: list[E] = field(default_factory=list)
    validation: list[E] = field(default_factory=list)
    kind: str = "images"
    format: str = "zip"

    @property
    def labels(self) -> list[str]:
        return sorted({e.label for e in self.train})

    def summary(self) -> dict[str, Any]:
        def counts(examples: list[E]) -> dict[str, int]:
            return dict(sorted(Counter(e.label for e in examples).items()))

        examples = len(self.train) + len(self.validation)
        summary = {
            "kind": self.kind,
            "format": self.format,
            "labels": self.labels,
            "train": counts(self.train),
            "validation": counts(self.validation),
            "examples": examples,
        }
        if self.kind == "images":
            summary["images"] = examples  # the name image datasets had first
        return summary


def _check_name(info: zipfile.ZipInfo) -> None:
    name = info.filename
    where = f"entry {name!r}"
    if "\\" in name:
        raise InvalidInput(f"{where}: backslashes are not allowed in names (use '/')")
    if name.startswith("/") or DRIVE.match(name):
        raise InvalidInput(f"{where}: absolute paths are not allowed")
    if any(part == ".." for part in name.split("/")):
        raise InvalidInput(f"{where}: '..' would escape the dataset folder (zip-slip)")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InvalidInput(f"{where}: symbolic links are not allowed")
    if "\x00" in name:
        raise InvalidInput(f"{where}: NUL in name")


def _place(name: str, split_layout: bool) -> tuple[str, str]:
    """(split, label) of an image entry, or 422 if it is not where the layout says images go."""
    parts = name.split("/")
    expected = "train|validation/<label>/<image>" if split_layout else "<label>/<image>"
    if split_layout and len(parts) == 3 and parts[0] in SPLITS:
        split, label = parts[0], parts[1]
    elif not split_layout and len(parts) == 2:
        split, label = "train", parts[0]
    else:
        raise InvalidInput(f"entry {name!r}: not in the image-folder layout (expected {expected})")
    if not label.strip() or len(label) > MAX_LABEL_CHARS:
        raise InvalidInput(f"entry {name!r}: a label must be 1-{MAX_LABEL_CHARS} characters")
    return split, label


def open_zip(data: bytes | Path | BinaryIO) -> zipfile.ZipFile:
    source: Any = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise InvalidInput(f"not a zip archive ({exc})") from exc


def _check_entry(info: zipfile.ZipInfo, limit: int) -> None:
    """From the zip's directory alone: a compression that can be read in bounded steps, and at
    most `limit` bytes once unpacked."""
    where = f"entry {info.filename!r}"
    if info.compress_type not in COMPRESSIONS:
        raise InvalidInput(f"{where}: compression method {info.compress_type} is not supported (use deflate)")
    if info.file_size > limit:
        raise InvalidInput(f"{where} unpacks to {info.file_size} bytes; the limit for one image is {limit}")


def read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """One entry's bytes: refused from the directory when it says more than `limit`, then read in
    chunks and counted, and refused as soon as it unpacks to more than the directory said. So
    each entry costs at most what its size in the directory says, and the zip at most the sum
    of those sizes, which `check_dataset` bounds before reading any entry."""
    _check_entry(info, limit)
    chunks: list[bytes] = []
    size = 0
    try:
        with archive.open(info) as stream:
            while chunk := stream.read(CHUNK_BYTES):
                size += len(chunk)
                if size > info.file_size:
                    raise InvalidInput(
                        f"entry {info.filename!r} unpacks to more than the {info.file_size} bytes"
                        " the zip's directory says"
                    )
                chunks.append(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, zlib.error) as exc:
        raise InvalidInput(f"entry {info.filename!r}: cannot be read from the zip ({exc})") from exc
    return b"".join(chunks)


def read_image(archive: zipfile.ZipFile, entry: str, limits: DatasetLimits) -> Image.Image:
    """One image of the zip, decoded with the inference path's checks (format, pixel limit) as RGB."""
    try:
        data = read_entry(archive, archive.getinfo(entry), limits.max_image_bytes)
    except KeyError as exc:
        raise InvalidInput(f"entry {entry!r}: not in the zip") from exc
    try:
        return decode_image(RawInput(0, data), limits.image)
    except GatewayError as exc:
        raise InvalidInput(f"entry {entry!r}: {exc.message.removeprefix('input 0: ')}") from exc


def image_entries(archive: zipfile.ZipFile, limits: DatasetLimits) -> list[zipfile.ZipInfo]:
    """The zip's image entries, in its order, once its directory passed the checks that need no
    decompression: the entry count, every name (hidden entries too: nothing may point outside),
    the total and each entry's unpacked size, the compression; 422 naming the entry otherwise."""
    everything = archive.infolist()
    if len(everything) > limits.max_files:
        raise InvalidInput(f"the zip has {len(everything)} entries; the limit is {limits.max_files}")
    for info in everything:
        _check_name(info)
    files = [i for i in everything if not IGNORED.search(i.filename) and not i.is_dir()]
    total = sum(i.file_size for i in files)
    if total > limits.max_uncompressed_bytes:
        raise InvalidInput(f"the zip unpacks to {total} bytes; the limit is {limits.max_uncompressed_bytes}")
    for info in files:  # from the directory, before anything is decompressed
        _check_entry(info, limits.max_image_bytes)
    if not files:
        raise InvalidInput("the zip holds no images")
    return files


def check_dataset(data: bytes | Path | BinaryIO, limits: DatasetLimits) -> Dataset[Example]:
    """Check a dataset zip completely (names, layout, sizes, every image decodes); 422 on a problem."""
    with open_zip(data) as archive:
        files = image_entries(archive, limits)
        split_layout = all(i.filename.split("/", 1)[0] in SPLITS for i in files)
        dataset: Dataset[Example] = Dataset()
        for info in files:
            split, label = _place(info.filename, split_layout)
            read_image(archive, info.filename, limits)
            target = dataset.train if split == "train" else dataset.validation
            target.append(Example(info.filename, label))
    check_counts(dataset, limits.min_images_per_label)
    return dataset


def check_counts(dataset: Dataset[Any], min_per_label: int) -> None:
    """422 unless the training split has two labels or more, each with `min_per_label` examples,
    and the validation split no label the training split lacks."""
    labels = dataset.labels
    if len(labels) < 2:
        found = f"only {labels[0]!r}" if labels else "none"
        where = " (folders)" if dataset.kind == "images" else ""
        raise InvalidInput(f"a classifier needs at least two labels{where}; found {found}")
    counts = Counter(e.label for e in dataset.train)
    few = {label: n for label, n in sorted(counts.items()) if n < min_per_label}
    if few:
        listed = ", ".join(f"{label!r} has {n}" for label, n in few.items())
        noun = "images" if dataset.kind == "images" else "examples"
        raise InvalidInput(f"every label needs at least {min_per_label} training {noun}: {listed}")
    unknown = sorted({e.label for e in dataset.validation} - set(labels))
    if unknown:
        raise InvalidInput(f"validation labels not in the training set: {', '.join(map(repr, unknown))}")


def load_dataset(path: Path) -> Dataset[Example]:
    """The examples of a zip already checked at upload (layout only: the images are read later)."""
    with open_zip(path) as archive:
        files = [i for i in archive.infolist() if not IGNORED.search(i.filename) and not i.is_dir()]
    split_layout = all(i.filename.split("/", 1)[0] in SPLITS for i in files)
    dataset: Dataset[Example] = Dataset()
    for info in files:
        split, label = _place(info.filename, split_layout)
        (dataset.train if split == "train" else dataset.validation).append(Example(info.filename, label))
    return dataset


def split_validation(examples: list[E], fraction: float, seed: int) -> tuple[list[E], list[E]]:
    """(train, validation): `fraction` of each label (at least one example) held out, chosen by `seed`."""

    rng = random.Random(seed)
    by_label: dict[str, list[E]] = {}
    for example in sorted(examples, key=lambda e: e.entry):
        by_label.setdefault(example.label, []).append(example)
    train: list[E] = []
    validation: list[E] = []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        held = max(1, round(len(group) * fraction))
        validation.extend(group[:held])
        train.extend(group[held:])
    return train, validation
