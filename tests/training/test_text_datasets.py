"""Text datasets (JSONL and CSV of text,label): the valid files are summarised and read back with
their texts; every malformed case gets its own 422 naming the line."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest

from service.errors import InvalidInput
from service.training.dataset_files import check_file, kind_of, training_data, with_examples
from service.training.datasets import DatasetLimits
from service.training.text_datasets import MAX_DATASET_LABELS, check_text_dataset, text_format
from tests.training.test_datasets import LIMITS as IMAGE_LIMITS

LIMITS = dataclasses.replace(IMAGE_LIMITS, min_images_per_label=2, max_text_chars=200)
GOOD = [("a great movie", "positive"), ("a good movie", "positive"), ("a bad movie", "negative")]
GOOD += [("a terrible movie", "negative")]


def jsonl(rows: list[object]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def good_jsonl(*extra: object) -> bytes:
    return jsonl([{"text": t, "label": label} for t, label in GOOD] + list(extra))


def refused(data: bytes, fmt: str = "jsonl", limits: DatasetLimits = LIMITS) -> str:
    with pytest.raises(InvalidInput) as caught:
        check_text_dataset(io.BytesIO(data), fmt, limits)
    assert caught.value.status_code == 422
    return caught.value.message


def test_jsonl_is_summarised_by_label_with_an_examples_count() -> None:
    dataset, suffix = check_file(io.BytesIO(good_jsonl() + b"\n"), "reviews.jsonl", LIMITS)
    assert suffix == ".jsonl"
    assert dataset.summary() == {
        "kind": "text",
        "format": "jsonl",
        "labels": ["negative", "positive"],
        "train": {"negative": 2, "positive": 2},
        "validation": {},
        "examples": 4,
    }


def test_csv_with_quoted_commas_newlines_and_a_bom_is_read_with_its_texts(tmp_path: Path) -> None:
    data = '\ufefflabel,text\r\npositive,"great, really great"\r\npositive,good\r\n'
    data += 'negative,"bad\nand long"\r\nnegative,terrible\r\n'
    dataset, suffix = check_file(io.BytesIO(data.encode()), "reviews.csv", LIMITS)
    assert (suffix, dataset.summary()["train"]) == (".csv", {"negative": 2, "positive": 2})
    path = tmp_path / "f.csv"
    path.write_bytes(data.encode())
    data_read = training_data(path, None, 0, LIMITS)
    texts = sorted(data_read.train_inputs + data_read.validation_inputs)
    assert texts == ["bad\nand long", "good", "great, really great", "terrible"]
    assert data_read.labels == ["negative", "positive"] and len(data_read.validation_inputs) == 2


def test_the_kind_is_told_by_suffix_else_by_the_first_bytes() -> None:
    assert text_format("x.zip", b"{") is None and text_format("x", b"PK\x03\x04") is None
    assert text_format("x.JSONL", b"") == "jsonl" and text_format("x.csv", b"") == "csv"
    assert text_format("input-0", b' {"text": "a", "label": "b"}') == "jsonl"
    assert text_format("input-0", b'"Text", label\nhello,x') == "csv"
    assert text_format("input-0", b"plain words") is None  # then checked as a zip: "not a zip archive"


def test_a_validation_file_gives_the_validation_set_of_known_labels(tmp_path: Path) -> None:
    train, held = tmp_path / "t.jsonl", tmp_path / "v.jsonl"
    train.write_bytes(good_jsonl())
    held.write_bytes(jsonl([{"text": "good", "label": "positive"}, {"text": "x", "label": "unknown"}]))
    data = training_data(train, held, 0, LIMITS)
    assert (data.train_inputs, data.train_labels) == ([t for t, _ in GOOD], [1, 1, 0, 0])
    assert (data.validation_inputs, data.validation_labels) == (["good"], [1])


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            b"{not json}",
            "line 5: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        ),
        (b'["a", "b"]', 'line 5: expected an object {"text": …, "label": …}'),
        (b'{"label": "positive"}', 'line 5: missing "text"'),
        (b'{"text": "fine"}', 'line 5: missing "label"'),
        (b'{"text": "   ", "label": "positive"}', 'line 5: "text" is empty'),
        (b'{"text": "fine", "label": ""}', 'line 5: "label" is empty'),
        (b'{"text": 3, "label": "positive"}', 'line 5: "text" must be a string, got int 3'),
        (b'{"text": "fine", "label": 1}', 'line 5: "label" must be a string, got int 1'),
        (
            b'{"text": "fine", "label": "' + b"x" * 65 + b'"}',
            'line 5: "label" is 65 characters; the limit is 64',
        ),
        (
            b'{"text": "' + b"y" * 201 + b'", "label": "positive"}',
            'line 5: "text" is 201 characters; the limit is 200',
        ),
        (b'{"text": "fine", "label": "a\\u0000b"}', 'line 5: "label" holds a NUL byte'),
        (
            b'{"text": "a \\ud800 b", "label": "positive"}',
            'line 5: "text" holds a lone surrogate (not valid UTF-8)',
        ),
        (b'{"text": "caf\xe9", "label": "positive"}', "line 5: not valid UTF-8 (byte 0xe9 at byte 14)"),
    ],
)
def test_every_bad_jsonl_line_is_refused_by_number(line: bytes, expected: str) -> None:
    assert refused(good_jsonl() + line + b"\n") == expected


def test_a_line_longer_than_any_text_may_be_is_refused_before_it_is_read_whole() -> None:
    limit = 200 * 6 + 4096
    assert refused(b'{"text": "' + b"z" * 10_000 + b'"}\n') == f"line 1: longer than {limit} bytes"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("", "the file is empty: expected a header with text and label, then examples"),
        ("text,label\n", "the file holds no examples"),
        ("sentence,label\nhi,x\n", "line 1: the header must name the columns text and label, once each"),
        ("text,label,text\n", "line 1: the header must name the columns text and label, once each"),
        ("text,label\na,positive\nb,positive,extra\n", "line 3: 3 fields; the header has 2"),
        ("text,label\na,positive\n,positive\n", 'line 3: "text" is empty'),
        ("text,label\na,positive\nb,\n", 'line 3: "label" is empty'),
        ('text,label\na,positive\n"b"x,negative\n', "line 3: not valid CSV ("),
        (
            "text,label\na,positive\n\nb,positive\nc,negative\n",
            "every label needs at least 2 training examples",
        ),
    ],
)
def test_every_bad_csv_record_is_refused_by_number(data: str, expected: str) -> None:
    assert refused(data.encode(), "csv").startswith(expected)


def test_a_multi_line_record_is_named_by_the_line_it_starts_on() -> None:
    data = 'text,label\n"one\ntwo",positive\n"three\nfour",positive,x\n'
    assert refused(data.encode(), "csv") == "line 4: 3 fields; the header has 2"


def test_empty_and_single_label_files_are_refused() -> None:
    assert refused(b"") == "the file holds no examples"
    assert refused(b"\n  \n") == "the file holds no examples"
    one = jsonl([{"text": "a", "label": "only"}, {"text": "b", "label": "only"}])
    assert refused(one) == "a classifier needs at least two labels; found only 'only'"


def test_too_many_examples_and_too_many_labels_name_the_line() -> None:
    few = dataclasses.replace(LIMITS, max_files=4)
    assert refused(good_jsonl({"text": "x", "label": "positive"}), limits=few) == (
        "line 5: more than 4 examples (the limit)"
    )
    many = dataclasses.replace(LIMITS, max_files=5000, min_images_per_label=1)
    rows = [{"text": "t", "label": f"l{i}"} for i in range(MAX_DATASET_LABELS + 1)]
    assert refused(jsonl(rows), limits=many) == (
        f"line {MAX_DATASET_LABELS + 1}: label 'l{MAX_DATASET_LABELS}' would be label "
        f"{MAX_DATASET_LABELS + 1}; a dataset may have at most {MAX_DATASET_LABELS}"
    )


def test_files_kept_before_text_datasets_read_as_image_zips_with_an_examples_count() -> None:
    old = {"labels": ["a", "b"], "train": {"a": 5, "b": 5}, "validation": {}, "images": 10}
    assert kind_of(old) == "images" and kind_of(None) == "images"
    assert with_examples(old) == {**old, "kind": "images", "examples": 10}
    new = {**old, "kind": "images", "format": "zip", "examples": 10}
    assert with_examples(new) is new
