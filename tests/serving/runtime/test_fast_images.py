"""The fast image path: the same pixels as the model's own processor, JPEGs decoded at reduced
scale, and the same answers as the exact path on real labelled digits."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, ViTImageProcessorPil

from service.serving.inputs import ImageLimits, RawInput, decode_image
from service.serving.manifests import ModelManifest
from service.serving.runtime import load_adapter
from service.serving.runtime.fast_images import ImagePlan, Normalizer
from tests.conftest import REPO
from tests.shipped import training_script

CPU = torch.device("cpu")
DIGITS = REPO / "models" / "digits-vit"
LIMITS = ImageLimits(max_pixels=10**8, max_aspect_ratio=32)


def photo(width: int, height: int, fmt: str, seed: int = 0) -> bytes:
    """A smooth random colour image (a photo's statistics, not noise), encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


def fast_features(plan: ImagePlan, data: bytes) -> torch.Tensor:
    image = decode_image(RawInput(0, data), LIMITS)  # no draft: the same decoded pixels for both
    return Normalizer(plan, CPU, torch.float32)(plan.pixels(image))


@pytest.mark.parametrize(
    "processor",
    [
        AutoImageProcessor.from_pretrained(DIGITS),  # exact size, nearest
        ViTImageProcessorPil(  # shorter side then centre crop, bicubic (DeiT's recipe)
            size={"shortest_edge": 64},
            do_center_crop=True,
            crop_size={"height": 56, "width": 56},
            resample=Image.Resampling.BICUBIC,
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        ),
    ],
    ids=["resize", "shortest-edge-and-crop"],
)
@pytest.mark.parametrize("size", [(97, 61), (40, 130)])
def test_the_fast_path_gives_the_processors_own_pixels(processor: Any, size: tuple[int, int]) -> None:
    plan = ImagePlan.of_processor(processor)
    assert plan is not None
    data = photo(*size, "PNG")
    expected = processor(images=decode_image(RawInput(0, data), LIMITS), return_tensors="pt")["pixel_values"]
    got = fast_features(plan, data)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) < 1e-5


def test_a_processor_with_steps_of_its_own_keeps_the_exact_path() -> None:
    class Custom(ViTImageProcessorPil):
        def _preprocess(self, *args: Any, **kwargs: Any) -> Any:
            return super()._preprocess(*args, **kwargs)

    assert ImagePlan.of_processor(Custom()) is None
    assert (
        ImagePlan.of_processor(ViTImageProcessorPil(do_pad=True, pad_size={"height": 8, "width": 8})) is None
    )
    assert ImagePlan.of_processor(ViTImageProcessorPil()) is not None


def test_a_jpeg_is_decoded_at_the_smallest_scale_that_covers_the_models_input() -> None:
    plan = ImagePlan.of_processor(AutoImageProcessor.from_pretrained(DIGITS))  # 32x32
    assert plan is not None
    jpeg = decode_image(RawInput(0, photo(640, 480, "JPEG")), LIMITS, draft=plan.draft)
    assert jpeg.size == (80, 60)  # 1/8 scale: still at least 32x32
    png = decode_image(RawInput(0, photo(640, 480, "PNG")), LIMITS, draft=plan.draft)
    assert png.size == (640, 480)  # only JPEG decodes at a reduced scale
    assert plan.pixels(jpeg).shape == plan.pixels(png).shape == (1, 3, 32, 32)
    assert plan.pixels(jpeg).dtype == torch.uint8


def digits_as_large_jpegs(count: int) -> tuple[list[bytes], list[int]]:
    """Held-out digits, rendered as the model was trained, then upscaled to 640x480 JPEGs."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    script = training_script()
    digits = load_digits()
    _, x_test, _, y_test = train_test_split(
        digits.images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    bodies = []
    for pixels in x_test[:count]:
        buffer = io.BytesIO()
        script.digit_to_image(pixels).resize((640, 480), Image.Resampling.NEAREST).save(
            buffer, "JPEG", quality=90
        )
        bodies.append(buffer.getvalue())
    return bodies, [int(y) for y in y_test[:count]]


def test_fast_and_exact_paths_agree_on_held_out_digits_sent_as_large_jpegs(tmp_path: Path) -> None:
    adapters = {
        how: load_adapter(
            ModelManifest(name="digits", task="image-classification", source=str(DIGITS), preprocessing=how),
            tmp_path,
            CPU,
            torch.float32,
        )
        for how in ("fast", "exact")
    }
    assert getattr(adapters["fast"], "plan", None) is not None and adapters["exact"].plan is None
    bodies, labels = digits_as_large_jpegs(120)
    top: dict[str, list[str]] = {}
    for how, adapter in adapters.items():
        features = [
            adapter.preprocess(decode_image(RawInput(i, b), LIMITS, draft=adapter.draft))
            for i, b in enumerate(bodies)
        ]
        top[how] = [str(output[0].label) for output in adapter.predict(features, top_k=1)]  # type: ignore[union-attr]
    agree = sum(f == e for f, e in zip(top["fast"], top["exact"], strict=True)) / len(bodies)
    accuracy = {
        how: sum(t == str(y) for t, y in zip(top[how], labels, strict=True)) / len(labels) for how in top
    }
    assert agree >= 0.95, agree
    assert accuracy["fast"] >= accuracy["exact"] - 0.03 and accuracy["fast"] >= 0.9, accuracy


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_copy_on_its_own_stream_gives_the_cpus_numbers() -> None:
    plan = ImagePlan(resample=2, scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4), size=(32, 32))
    batch = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    on_gpu = Normalizer(plan, torch.device("cuda", 0), torch.float32)(batch)
    assert torch.allclose(on_gpu.cpu(), Normalizer(plan, CPU, torch.float32)(batch), atol=1e-6)
