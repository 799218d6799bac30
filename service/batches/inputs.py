"""Batch input files: a zip of images (one input per image, in the zip's order), or JSON lines,
one `{"inputs": "<text, or an image as base64 or a data: URL>"}` a line.

Checked whole at upload (422 naming the entry or the line), so a job can only fail on an input
the model itself refuses, which is that input's error line in the results; read again, from
any input on, by the job runner.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from service.errors import GatewayError, InvalidInput
from service.serving.inputs import RawInput, decode_base64
from service.serving.runtime.base import InputKind
from service.training.datasets import DatasetLimits, image_entries, open_zip, read_entry, read_image

Format = Literal["zip", "jsonl"]
ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class BatchFile:
    format: Format
    inputs: int

    def summary(self) -> dict[str, Any]:
        return {"format": self.format, "inputs": self.inputs}


@dataclass(frozen=True)
class BatchItem:
    """One input of a batch file: its place (0-based), its zip entry (zips only), and either its
    raw input or the error that makes it unusable for the model (its results line)."""

    index: int
    entry: str | None
    raw: RawInput | None
    error: GatewayError | None = None


def file_format(upload: BinaryIO) -> Format:
    upload.seek(0)
    head = upload.read(len(ZIP_MAGIC))
    upload.seek(0)
    return "zip" if head == ZIP_MAGIC else "jsonl"


def check_batch_file(upload: BinaryIO, limits: DatasetLimits) -> BatchFile:
    """Check a batch input file completely; 422 naming the entry or line at fault."""
    if file_format(upload) == "zip":
        with open_zip(upload) as archive:
            entries = image_entries(archive, limits)
            for info in entries:
                read_image(archive, info.filename, limits)
        return BatchFile("zip", len(entries))
    count = 0
    for number, line in enumerate(upload, start=1):
        if count >= limits.max_files:
            raise InvalidInput(f"the file has more than {limits.max_files} lines; that is the limit")
        if not line.strip():
            if upload.read(1):  # only trailing blank lines may be left out
                raise InvalidInput(f"line {number}: empty; send one JSON object a line")
            break
        if len(line) > limits.max_image_bytes:
            raise InvalidInput(
                f"line {number}: {len(line)} bytes; the limit for one input is {limits.max_image_bytes}"
            )
        _line_input(number, line)
        count += 1
    if count == 0:
        raise InvalidInput('the file holds no inputs: send a zip of images or JSON lines {"inputs": "..."}')
    return BatchFile("jsonl", count)


def _line_input(number: int, line: bytes) -> str:
    """The `inputs` string of a JSONL line (`number` counts from 1), or 422 naming the line."""
    try:
        payload = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"line {number}: not valid JSON ({exc})") from None
    if not isinstance(payload, dict) or set(payload) != {"inputs"}:
        raise InvalidInput(f'line {number}: expected an object like {{"inputs": "..."}}')
    value = payload["inputs"]
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(
            f"line {number}: inputs must be a non-empty string (a text, or an image as base64)"
        )
    return value


def read_batch_inputs(
    path: Path, fmt: str, kind: InputKind, limits: DatasetLimits, start: int = 0
) -> Iterator[BatchItem]:
    """The inputs of a checked batch file from `start` on, in order, read one at a time."""
    if fmt == "zip":
        with zipfile.ZipFile(path) as archive:
            entries = image_entries(archive, limits)
            for index in range(start, len(entries)):
                info = entries[index]
                data = read_entry(archive, info, limits.max_image_bytes)
                yield BatchItem(index, info.filename, RawInput(index, data))
        return
    with path.open("rb") as lines:
        for index, line in enumerate(lines):
            if not line.strip():
                return
            if index < start:
                continue
            text = _line_input(index + 1, line)
            if kind == "text":
                yield BatchItem(index, None, RawInput(index, text))
                continue
            try:
                data, declared = decode_base64(index, text)
            except GatewayError as exc:
                yield BatchItem(index, None, None, exc)
                continue
            yield BatchItem(index, None, RawInput(index, data, declared))
