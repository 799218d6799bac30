"""`prepare_inputs` and the preprocessing processes' own loop: the deadline is checked before each
input, so a request past its deadline costs no more decoding."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from PIL import Image

from service.errors import DeadlineExceeded
from service.serving.deadlines import parse_timeout_ms
from service.serving.inputs import ImageLimits, RawInput
from service.serving.preprocess import prepare_images, prepare_inputs
from service.serving.runtime.base import ModelAdapter, Output

LIMITS = ImageLimits(max_pixels=1_000_000, max_aspect_ratio=32)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


class Recorder(ModelAdapter):
    """An adapter that records what it was asked to preprocess."""

    input_kind = "image"
    output_key = "predictions"

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def preprocess(self, item: Any) -> Any:
        self.seen.append(item)
        return item

    def predict(self, features: list[Any], *, top_k: int) -> list[Output]:
        raise AssertionError("not called here")

    def warmup_input(self) -> Any:
        return None


def test_inputs_are_prepared_in_order_before_the_deadline() -> None:
    adapter = Recorder()
    inputs = [RawInput(0, png()), RawInput(1, png())]
    features = prepare_inputs(adapter, "image", inputs, LIMITS, time.monotonic() + 60)
    assert [f.size for f in features] == [(8, 8), (8, 8)]


def test_a_passed_deadline_stops_before_the_next_input() -> None:
    adapter = Recorder()
    with pytest.raises(DeadlineExceeded, match="deadline passed while preprocessing input 0"):
        prepare_inputs(adapter, "text", [RawInput(0, "a"), RawInput(1, "b")], LIMITS, time.monotonic())
    assert adapter.seen == []


def test_a_passed_deadline_stops_the_preprocessing_process_too() -> None:
    def processor(**kwargs: Any) -> Any:
        raise AssertionError("not called past the deadline")

    with pytest.raises(DeadlineExceeded, match="input 0"):
        prepare_images(processor, [RawInput(0, png())], LIMITS, time.monotonic())


@pytest.mark.parametrize(
    ("header", "expected"), [(None, None), ("1", 1), (" 250 ", 250), ("600000", 600_000), ("0" * 17 + "7", 7)]
)
def test_timeout_header_accepted(header: str | None, expected: int | None) -> None:
    assert parse_timeout_ms(header, 600_000) == expected
