"""Which kind a dataset file is, and what each kind trains: image-folder zips (`images`) for
image classifiers, JSONL or CSV of text,label (`text`) for text classifiers.

The kind is decided once, at upload (by the file's name and first bytes), recorded in the file's
summary and kept in its stored name's suffix; the trainer reads the file back by that suffix.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from service.training.datasets import Dataset, DatasetLimits, Example, check_dataset, load_dataset, read_image
from service.training.datasets import split_validation as split
from service.training.text_datasets import FORMATS, check_text_dataset, load_text_dataset, text_format
from service.training.trainer import TrainingData

# the dataset kind each fine-tunable task trains on
DATASET_KINDS = {"image-classification": "images", "text-classification": "text"}
DESCRIBED = {"images": "a zip of images in image-folder layout", "text": "text examples (JSONL or CSV)"}
SNIFF_BYTES = 4096
VALIDATION_FRACTION = 0.2  # held out of each label when there is no validation set


def check_file(upload: BinaryIO, filename: str, limits: DatasetLimits) -> tuple[Dataset[Example], str]:
    """Check an uploaded dataset of any kind completely (422 naming the first problem): the
    dataset, and the suffix its file is kept under (`.zip`, `.jsonl`, `.csv`)."""
    head = upload.read(SNIFF_BYTES)
    upload.seek(0)
    fmt = text_format(filename, head)
    if fmt is None:
        return check_dataset(upload, limits), ".zip"
    return check_text_dataset(upload, fmt, limits), f".{fmt}"


def kind_of(summary: dict[str, Any] | None) -> str:
    """The kind of a file from its summary (files kept before text datasets are image zips)."""
    return str((summary or {}).get("kind", "images"))


def with_examples(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """A file's summary with `kind` and `examples` (files kept before they existed lack them)."""
    if summary is None or "examples" in summary:
        return summary
    return {**summary, "kind": kind_of(summary), "examples": summary.get("images", 0)}


def _load(path: Path, limits: DatasetLimits) -> Dataset[Any]:
    fmt = path.suffix.removeprefix(".")
    if fmt in FORMATS:
        return load_text_dataset(path, fmt, limits)
    return load_dataset(path)


def _inputs(path: Path, examples: list[Any], limits: DatasetLimits) -> list[Any]:
    """What the model reads for `examples` of the file at `path`: texts, or images read from the zip."""
    if path.suffix != ".zip":
        return [e.text for e in examples]
    with zipfile.ZipFile(path) as archive:
        return [read_image(archive, e.entry, limits) for e in examples]


def training_data(
    train_path: Path, validation_path: Path | None, seed: int, limits: DatasetLimits
) -> TrainingData:
    """A job's examples: the training file's (its `validation/` split, or the validation file, or
    a seeded, stratified 20 % of each label held out), with labels numbered in sorted order.
    Validation examples of labels the training set lacks are left out."""
    dataset = _load(train_path, limits)
    train, validation = dataset.train, dataset.validation
    validation_from = train_path
    if validation_path is not None:
        held = _load(validation_path, limits)
        validation, validation_from = held.train + held.validation, validation_path
    elif not validation:
        train, validation = split(train, VALIDATION_FRACTION, seed)
    index = {label: i for i, label in enumerate(dataset.labels)}
    validation = [e for e in validation if e.label in index]
    return TrainingData(
        labels=dataset.labels,
        train_inputs=_inputs(train_path, train, limits),
        train_labels=[index[e.label] for e in train],
        validation_inputs=_inputs(validation_from, validation, limits),
        validation_labels=[index[e.label] for e in validation],
    )
