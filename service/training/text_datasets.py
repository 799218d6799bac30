"""Text datasets for `text-classification` fine-tunes: JSONL (one `{"text": …, "label": …}` object
a line) or CSV (a header with `text` and `label` columns, then one example a record).

Checked at upload and read again by the trainer with the same parser. The file is read a line at
a time from its spooled copy, each line at most a bounded number of bytes, so a check costs memory
for one line and the label counts, whatever the file's size. Every refusal is an `InvalidInput`
(422) naming the line (1-based, as an editor counts) and the problem.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from service.bounds import text_problem
from service.errors import InvalidInput
from service.training.datasets import MAX_LABEL_CHARS, Dataset, DatasetLimits, Example, check_counts

FORMATS = ("jsonl", "csv")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
MAX_DATASET_LABELS = 1000  # distinct labels in one dataset: a classifier head of at most this many
LINE_OVERHEAD = 4096  # bytes a line may hold beyond its text's (the label, JSON syntax, quotes)
HEADER = "the header must name the columns text and label, once each"
BYTES_PER_CHAR = 6  # the most one character of text can take in a line (a JSON \\uXXXX escape)


@dataclass(frozen=True)
class TextExample:
    line: int  # where the example starts in its file
    text: str
    label: str

    @property
    def entry(self) -> str:
        return f"line {self.line}"


def text_format(filename: str, head: bytes) -> str | None:
    """`jsonl` or `csv` when the file is a text dataset (by its name's suffix, else by its first
    bytes), None otherwise (a zip, or nothing known: checked as a zip)."""
    suffix = Path(filename).suffix.lower()
    if head.startswith(b"PK") or suffix == ".zip":
        return None
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    start = head.removeprefix(codecs.BOM_UTF8).lstrip()
    if start.startswith(b"{"):
        return "jsonl"
    first = start.split(b"\n", 1)[0].lower().replace(b'"', b"")
    if {b"text", b"label"} <= {column.strip() for column in first.split(b",")}:
        return "csv"
    return None


def _lines(stream: BinaryIO, limit: int) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of `stream`, decoded as UTF-8; 422 on a line longer than
    `limit` bytes or one that is not UTF-8. A UTF-8 byte order mark at the start is dropped."""
    number = 0
    while raw := stream.readline(limit + 1):
        number += 1
        if len(raw) > limit:
            raise InvalidInput(f"line {number}: longer than {limit} bytes")
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"line {number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1})"
            ) from exc


def _field(value: Any, name: str, line: int, max_chars: int) -> str:
    """`value` as the example's `name` (text or label): a non-empty string of at most `max_chars`."""
    where = f"line {line}"
    if value is None:
        raise InvalidInput(f'{where}: missing "{name}"')
    if not isinstance(value, str):
        raise InvalidInput(f'{where}: "{name}" must be a string, got {type(value).__name__} {value!r:.40}')
    if not value.strip():
        raise InvalidInput(f'{where}: "{name}" is empty')
    if len(value) > max_chars:
        raise InvalidInput(f'{where}: "{name}" is {len(value)} characters; the limit is {max_chars}')
    return value


def _jsonl(stream: BinaryIO, limit: int) -> Iterator[tuple[int, Any, Any]]:
    for line, text in _lines(stream, limit):
        if not text.strip():
            continue  # blank lines (a trailing newline, spacing) hold no example
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"line {line}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(record, dict):
            raise InvalidInput(f'line {line}: expected an object {{"text": …, "label": …}}')
        yield line, record.get("text"), record.get("label")


def _csv(stream: BinaryIO, limit: int) -> Iterator[tuple[int, Any, Any]]:
    lines = _lines(stream, limit)
    numbers: list[int] = [0]  # the last physical line handed to the reader

    def physical() -> Iterator[str]:
        for number, text in lines:
            numbers[0] = number
            yield text

    reader = csv.reader(physical(), strict=True)
    columns: dict[str, int] | None = None
    while True:
        start = numbers[0] + 1
        try:
            record = next(reader, None)
        except csv.Error as exc:
            raise InvalidInput(f"line {start}: not valid CSV ({exc})") from exc
        if record is None:
            break
        if not any(cell.strip() for cell in record):
            continue
        if columns is None:
            names = [cell.strip().lower() for cell in record]
            if "text" not in names or "label" not in names or len(set(names)) != len(names):
                raise InvalidInput(f"line {start}: {HEADER}")
            columns = {name: i for i, name in enumerate(names)}
            continue
        if len(record) != len(columns):
            raise InvalidInput(f"line {start}: {len(record)} fields; the header has {len(columns)}")
        yield start, record[columns["text"]], record[columns["label"]]
    if columns is None:
        raise InvalidInput("the file is empty: expected a header with text and label, then examples")


def read_text_examples(stream: BinaryIO, fmt: str, limits: DatasetLimits) -> Iterator[TextExample]:
    """The examples of a JSONL or CSV dataset in file order, each checked (422 at the first problem)."""
    limit = limits.max_text_chars * BYTES_PER_CHAR + LINE_OVERHEAD
    records = _jsonl(stream, limit) if fmt == "jsonl" else _csv(stream, limit)
    for line, text, label in records:
        text = _field(text, "text", line, limits.max_text_chars)
        label = _field(label, "label", line, MAX_LABEL_CHARS)
        for name, value in (("text", text), ("label", label)):  # a lone surrogate breaks tokenizers too
            if (problem := text_problem(value)) is not None:
                raise InvalidInput(f'line {line}: "{name}" {problem}')
        yield TextExample(line, text, label)


def check_text_dataset(stream: BinaryIO, fmt: str, limits: DatasetLimits) -> Dataset[Example]:
    """Check a text dataset completely; its examples by line (texts left out: an upload's check
    keeps only labels). 422 naming the line and the problem."""
    dataset: Dataset[Example] = Dataset(kind="text", format=fmt)
    labels: set[str] = set()
    for example in read_text_examples(stream, fmt, limits):
        if len(dataset.train) >= limits.max_files:
            raise InvalidInput(f"line {example.line}: more than {limits.max_files} examples (the limit)")
        if example.label not in labels and len(labels) >= MAX_DATASET_LABELS:
            raise InvalidInput(
                f"line {example.line}: label {example.label!r} would be label {MAX_DATASET_LABELS + 1}; "
                f"a dataset may have at most {MAX_DATASET_LABELS}"
            )
        labels.add(example.label)
        dataset.train.append(Example(example.entry, example.label))
    if not dataset.train:
        raise InvalidInput("the file holds no examples")
    check_counts(dataset, limits.min_images_per_label)
    return dataset


def load_text_dataset(path: Path, fmt: str, limits: DatasetLimits) -> Dataset[TextExample]:
    """The examples (with their texts) of a text dataset checked at upload."""
    dataset: Dataset[TextExample] = Dataset(kind="text", format=fmt)
    with path.open("rb") as stream:
        dataset.train.extend(read_text_examples(stream, fmt, limits))
    return dataset
