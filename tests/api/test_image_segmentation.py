"""Image segmentation through the predict route, on a small SegFormer built from its config
(random weights): each image's segments are the transformers pipeline's, one image at a time, with
masks (COCO RLE) in the image's own size that cover each pixel once; a model output fixed here
comes back scaled exactly to an image of another size than the model's input; requests batched
together get the answers they get alone; a bad `threshold` is a 422; each image is one input."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from service.serving.runtime import rle
from service.serving.runtime.image_segmentation import ImageSegmentationAdapter
from tests.api.conftest import Gate
from tests.conftest import write_manifest

pytestmark = pytest.mark.anyio

MODEL = "tiny-segmenter"
PREDICT = f"/v1/models/{MODEL}/predict"
SIZES = [(90, 60), (50, 70), (33, 33)]  # (width, height): none is the model's 32x32


@pytest.fixture(autouse=True)
def segmenter(models_dir: Path, tiny_segformer_dir: Path) -> None:
    write_manifest(
        models_dir,
        MODEL,
        f"""
        name: {MODEL}
        task: image-segmentation
        source: {tiny_segformer_dir}
        dtype: float32  # compared with the float32 pipeline below; auto may pick bfloat16
        batching: {{max_batch_size: 8, max_delay_ms: 2}}
        price: {{per_image: 0.001}}
        """,
    )


def noise(size: tuple[int, int], seed: int) -> bytes:
    """A PNG of random pixels: the random model then finds more than one class in it."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGES = [noise(size, seed) for seed, size in enumerate(SIZES)]


def files(images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]


async def test_each_image_gets_the_pipelines_segments_covering_its_own_pixels_once(
    client: httpx.AsyncClient, tiny_segformer_dir: Path
) -> None:
    from transformers import pipeline

    response = await client.post(PREDICT, files=files(IMAGES))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["inputs"] == 3 and body["usage"]["cost_micro"] == 3000  # one input per image
    reference = pipeline("image-segmentation", model=str(tiny_segformer_dir), device="cpu")
    classes_seen: set[str] = set()
    for data, (width, height), segments in zip(IMAGES, SIZES, body["segments"], strict=True):
        expected = reference(Image.open(io.BytesIO(data)).convert("RGB"))
        assert [s["label"] for s in segments] == [e["label"] for e in expected]
        assert all(s["score"] is None for s in segments)  # semantic: as the pipeline scores them
        covered = np.zeros((height, width), dtype=np.int64)
        for segment, e in zip(segments, expected, strict=True):
            assert segment["mask"]["size"] == [height, width]
            mask = rle.decode(segment["mask"])
            assert np.array_equal(mask, np.asarray(e["mask"]) > 0)
            covered += mask
        assert (covered == 1).all()  # every pixel in exactly one segment
        classes_seen.update(s["label"] for s in segments)
    assert len(classes_seen) > 1  # the images are not all one class


async def test_a_fixed_model_output_is_scaled_back_exactly_to_the_original_image(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import SegformerForSemanticSegmentation
    from transformers.modeling_outputs import SemanticSegmenterOutput

    # 8x8 logits: background on the left half; on the right, dog above cat. Left and right differ
    # by 100, top and bottom by 1, so the upsampled class changes exactly halfway each way.
    left = torch.zeros(8, 8)
    left[:, :4] = 100.0
    top = torch.zeros(8, 8)
    top[:4] = 1.0
    logits = torch.stack([left, (100.0 - left) + (1.0 - top), (100.0 - left) + top])[None]
    seen: list[tuple[int, ...]] = []

    def fixed(self: Any, pixel_values: torch.Tensor, **kwargs: Any) -> SemanticSegmenterOutput:
        seen.append(tuple(pixel_values.shape))
        return SemanticSegmenterOutput(logits=logits.expand(pixel_values.shape[0], -1, -1, -1))

    monkeypatch.setattr(SegformerForSemanticSegmentation, "forward", fixed)
    image = noise((200, 100), 9)
    response = await client.post(PREDICT, content=image, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    assert seen == [(1, 3, 32, 32)]  # the model read 32x32; the masks are the 200x100 image's
    # column by column: 100 columns of background; then each column is 50 dog pixels over 50 cat
    assert response.json()["segments"] == [
        [
            {"label": "background", "score": None, "mask": {"size": [100, 200], "counts": [0, 10000, 10000]}},
            {"label": "cat", "score": None, "mask": {"size": [100, 200], "counts": [10050] + [50] * 199}},
            {"label": "dog", "score": None, "mask": {"size": [100, 200], "counts": [10000] + [50] * 200}},
        ]
    ]


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    gate = Gate()
    gate.hold(ImageSegmentationAdapter, monkeypatch)
    yield gate
    gate.open.set()


async def test_requests_batched_together_get_the_answers_they_get_alone(
    client: httpx.AsyncClient, gate: Gate
) -> None:
    bodies: list[dict[str, Any]] = [
        {"content": data, "headers": {"Content-Type": "image/png"}} for data in IMAGES
    ]
    bodies.append({"files": files(IMAGES[::-1]), "params": {"threshold": 0.2}})
    alone = [(await client.post(PREDICT, **body)).json()["segments"] for body in bodies]
    answers = await gate.one_then_the_rest(client, MODEL, bodies)
    assert [len(batch) for batch in gate.batches] == [1, 2 + 3]  # the held one, then the rest at once
    for response, single in zip(answers, alone, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["segments"] == single
        assert response.json()["usage"]["inputs"] == len(single)


@pytest.mark.parametrize(
    ("path", "threshold", "says"),
    [
        (PREDICT, "-0.1", "threshold"),
        (PREDICT, "1.5", "threshold"),
        (PREDICT, "nan", "threshold"),
        (PREDICT, "many", "threshold"),
        ("/v1/models/tiny-vit/predict", "0.5", "threshold: only object detection and image segmentation"),
    ],
)
async def test_a_bad_threshold_is_a_422_naming_it(
    client: httpx.AsyncClient, path: str, threshold: str, says: str
) -> None:
    response = await client.post(
        path, content=IMAGES[0], headers={"Content-Type": "image/png"}, params={"threshold": threshold}
    )
    assert response.status_code == 422, response.text
    assert says in response.json()["error"]["message"]
