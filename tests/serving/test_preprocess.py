"""`prepare_inputs` and the preprocessing processes' own loop: the deadline is checked before each
input, so a request past its deadline costs no more decoding; a front-end worker's inline decoding
stops before the image that would go past its pixel budget and a thread finishes the same work."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.errors import DeadlineExceeded, InvalidInput
from service.serving.deadlines import parse_timeout_ms
from service.serving.inputs import ImageLimits, RawInput
from service.serving.preprocess import prepare_images, prepare_inputs
from service.serving.runtime.base import ModelAdapter, Output
from service.serving.runtime.fast_images import ImagePlan

LIMITS = ImageLimits(max_pixels=1_000_000, max_aspect_ratio=32)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


PLAN = ImagePlan(resample=2, scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=(32, 32))


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


def test_inline_decoding_stops_before_the_image_past_its_budget_and_a_thread_finishes_alike() -> None:
    # 640x480 decodes at 1/8 scale for a 32x32 input (80x60 = 4,800 pixels); a PNG has no scale
    small, wide = jpeg(640, 480, 0), png()
    inputs = [RawInput(0, small), RawInput(1, small), RawInput(2, jpeg(480, 640, 1)), RawInput(3, wide)]
    deadline = time.monotonic() + 60
    whole = prepare_images(PLAN, inputs, LIMITS, deadline)  # as a thread does it all
    assert [a.shape for a in whole] == [(1, 3, 32, 32)] * 4
    inline = prepare_images(PLAN, inputs, LIMITS, deadline, pixel_budget=4_800 * 2)
    assert len(inline) == 2  # the third image would take it past 9,600 decoded pixels
    finished = prepare_images(PLAN, inputs, LIMITS, deadline, inline)
    assert all(np.array_equal(a, b) for a, b in zip(finished, whole, strict=True))
    assert len(prepare_images(PLAN, inputs, LIMITS, deadline, pixel_budget=4_800 * 3 + 64)) == 4
    assert prepare_images(PLAN, inputs, LIMITS, deadline, pixel_budget=4_799) == []


def test_inline_decoding_raises_the_first_bad_inputs_error_in_order() -> None:
    whole = jpeg(640, 480, 2)
    broken = whole[: len(whole) // 2]  # a header, then half of the pixels
    inputs = [RawInput(0, jpeg(64, 64, 3)), RawInput(1, broken), RawInput(2, b"not an image")]
    with pytest.raises(InvalidInput, match="input 1: image is truncated or corrupt"):
        prepare_images(PLAN, inputs, LIMITS, time.monotonic() + 60, pixel_budget=250_000)


@pytest.mark.parametrize(
    ("header", "expected"), [(None, None), ("1", 1), (" 250 ", 250), ("600000", 600_000), ("0" * 17 + "7", 7)]
)
def test_timeout_header_accepted(header: str | None, expected: int | None) -> None:
    assert parse_timeout_ms(header, 600_000) == expected
