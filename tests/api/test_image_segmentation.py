"""Image segmentation through the predict route, on a small SegFormer (semantic) and a small
Mask2Former (panoptic) built from their configs (random weights): each image's segments are the
transformers pipeline's, one image at a time, with masks (COCO RLE) in the image's own size that
cover each pixel once; model outputs fixed here come back scaled exactly to images of other sizes
than the model's input, also from a padded batch of differently shaped images; requests batched
together get the answers they get alone; `threshold` filters and a bad one is a 422; each image is
one input."""

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

from service.api import schemas
from service.serving.runtime import rle
from service.serving.runtime.image_segmentation import ImageSegmentationAdapter
from tests.api.conftest import Gate, held
from tests.conftest import Gateway, write_manifest

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
    schemas.Prediction.model_validate(body)
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


PANOPTIC = "tiny-panoptic"


@pytest.fixture
def panoptic(models_dir: Path, tiny_mask2former_dir: Path) -> None:
    write_manifest(
        models_dir,
        PANOPTIC,
        f"""
        name: {PANOPTIC}
        task: image-segmentation
        source: {tiny_mask2former_dir}
        dtype: float32
        batching: {{max_batch_size: 8, max_delay_ms: 2}}
        price: {{per_image: 0.001}}
        """,
    )


def halves(size: tuple[int, int]) -> bytes:
    """A PNG whose left half is white and right half black."""
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_panoptic_masks_of_a_padded_batch_are_each_images_own(
    panoptic: None, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import Mask2FormerForUniversalSegmentation
    from transformers.models.mask2former.modeling_mask2former import (
        Mask2FormerForUniversalSegmentationOutput,
    )

    seen: list[tuple[int, ...]] = []

    def fixed(self: Any, pixel_values: torch.Tensor, **kwargs: Any) -> Any:
        """Query 0 is a cat where the image is bright, query 1 a dog where it is dark; the others
        are no object. Padding (zeros) is neither: if it were read, it would tie to the cat."""
        seen.append(tuple(pixel_values.shape))
        n = pixel_values.shape[0]
        bright = torch.nn.functional.avg_pool2d(pixel_values[:, :1], 4).sign()
        masks = torch.cat([10 * bright, -10 * bright, torch.full_like(bright, -10).expand(-1, 3, -1, -1)], 1)
        classes = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 9.0], [0, 0, 9.0], [0, 0, 9.0]])
        return Mask2FormerForUniversalSegmentationOutput(
            class_queries_logits=classes.expand(n, -1, -1), masks_queries_logits=masks
        )

    monkeypatch.setattr(Mask2FormerForUniversalSegmentation, "forward", fixed)
    path = f"/v1/models/{PANOPTIC}/predict"
    images = [halves((200, 100)), halves((100, 200))]  # the model reads 128x64 and 64x128
    response = await client.post(path, files=files(images))
    assert response.status_code == 200, response.text
    assert seen[-1] == (2, 3, 128, 128)  # one pass, each image padded to the other's size
    score = round(torch.tensor([5.0, 0, 0]).softmax(-1)[0].item(), 6)
    for (width, height), segments in zip([(200, 100), (100, 200)], response.json()["segments"], strict=True):
        # the left half (its columns, top to bottom) is the cat, the right half the dog
        half = width // 2 * height
        assert segments == [
            {"label": "cat", "score": score, "mask": {"size": [height, width], "counts": [0, half, half]}},
            {"label": "dog", "score": score, "mask": {"size": [height, width], "counts": [half, half]}},
        ]
    for data, segments in zip(images, response.json()["segments"], strict=True):  # alone: the same
        alone = await client.post(path, content=data, headers={"Content-Type": "image/png"})
        assert alone.json()["segments"] == [segments]
    above = await client.post(path, files=files(images), params={"threshold": round(score + 0.001, 6)})
    assert above.json()["segments"] == [[], []]  # both segments score below the threshold


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    with held(ImageSegmentationAdapter, monkeypatch) as gate:
        yield gate


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


async def test_each_image_is_one_billed_input_in_the_tenants_usage(gateway: Gateway) -> None:
    async with gateway.client() as admin:
        assert (await admin.post("/v1/admin/tenants", json={"name": "acme"})).status_code == 201
        key = (await admin.post("/v1/admin/tenants/acme/keys", json={})).json()["key"]
    async with gateway.client(key) as acme:
        several = await acme.post(PREDICT, files=files(IMAGES))
        one = await acme.post(PREDICT, content=IMAGES[0], headers={"Content-Type": "image/png"})
        refused = await acme.post(
            PREDICT, content=IMAGES[0], headers={"Content-Type": "image/png"}, params={"threshold": 2}
        )
        assert [several.status_code, one.status_code, refused.status_code] == [200, 200, 422]
        usage = (await acme.get("/v1/usage", params={"group_by": "model"})).json()["data"]
    (row,) = [r for r in usage if r["model"] == MODEL]
    # 4 images, 4 inputs; the refused request is not billed
    assert (row["requests"], row["inputs"], row["cost_micro"]) == (2, 4, 4000)
