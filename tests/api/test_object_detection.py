"""Object detection through the predict route, on a small YOLOS built from its config (random
weights): each image's boxes are the transformers pipeline's, one image at a time; a model output
fixed here comes back scaled exactly to an image of another size than the model's input; the
`threshold` filters, and one out of range is a 422."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from PIL import Image

from tests.conftest import image_bytes, write_manifest

pytestmark = pytest.mark.anyio

PREDICT = "/v1/models/tiny-detector/predict"


@pytest.fixture(autouse=True)
def detector(models_dir: Path, tiny_yolos_dir: Path) -> None:
    write_manifest(
        models_dir,
        "tiny-detector",
        f"""
        name: tiny-detector
        task: object-detection
        source: {tiny_yolos_dir}
        dtype: float32  # compared with the float32 pipeline below; auto may pick bfloat16
        batching: {{max_batch_size: 8, max_delay_ms: 2}}
        price: {{per_image: 0.001}}
        """,
    )


def files(images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]


def by_score(boxes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(boxes, key=lambda b: -b["score"])


async def test_each_image_gets_the_pipelines_boxes_in_its_own_pixels(
    client: httpx.AsyncClient, tiny_yolos_dir: Path
) -> None:
    from transformers import pipeline

    images = [image_bytes("PNG", (90, 60), color) for color in [(200, 30, 30), (30, 200, 30), (9, 9, 9)]]
    response = await client.post(PREDICT, params={"threshold": 0.0}, files=files(images))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["inputs"] == 3 and body["usage"]["cost_micro"] == 3000
    reference = pipeline("object-detection", model=str(tiny_yolos_dir), device="cpu")
    for data, boxes in zip(images, body["detections"], strict=True):
        expected = by_score(reference(Image.open(io_of(data)).convert("RGB"), threshold=0.0))
        assert len(boxes) == len(expected) == 5  # every detection token scores above 0
        assert [(b["label"], b["box"]) for b in boxes] == [(e["label"], e["box"]) for e in expected]
        assert [b["score"] for b in boxes] == pytest.approx([e["score"] for e in expected], abs=1e-5)
        for b in boxes:
            assert (
                0 <= b["box"]["xmin"] <= b["box"]["xmax"] <= 90
                and 0 <= b["box"]["ymin"] <= b["box"]["ymax"] <= 60
            )
    fewer = (await client.post(PREDICT, params={"threshold": 0.9}, files=files(images[:1]))).json()
    assert fewer["detections"] == [[b for b in body["detections"][0] if b["score"] > 0.9]]


def io_of(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


async def test_a_fixed_model_output_is_scaled_back_exactly_to_the_original_image(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import YolosForObjectDetection
    from transformers.models.yolos.modeling_yolos import YolosObjectDetectionOutput

    # classes: cat, dog, no object; boxes: (centre x, centre y, width, height) as fractions
    logits = torch.tensor(
        [[4.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 5.0], [0.0, 0.0, 0.0], [0.0, 0.0, 9.0]]
    )
    boxes = torch.tensor(
        [
            [0.25, 0.5, 0.5, 0.5],
            [0.75, 0.25, 0.5, 0.5],
            [0.5, 0.5, 1.0, 1.0],
            [0.5, 0.5, 0.2, 0.2],
            [0.1, 0.1, 0.1, 0.1],
        ]
    )
    seen: list[tuple[int, ...]] = []

    def fixed(self: Any, pixel_values: torch.Tensor, **kwargs: Any) -> YolosObjectDetectionOutput:
        seen.append(tuple(pixel_values.shape))
        n = pixel_values.shape[0]
        return YolosObjectDetectionOutput(logits=logits.expand(n, -1, -1), pred_boxes=boxes.expand(n, -1, -1))

    monkeypatch.setattr(YolosForObjectDetection, "forward", fixed)
    response = await client.post(PREDICT, content=image_bytes("PNG", (200, 100)), params={"threshold": 0.5})
    assert response.status_code == 200, response.text
    assert seen == [(1, 3, 32, 64)]  # the model read a 64x32 image; the boxes are the 200x100 one's
    cat = torch.tensor([4.0, 0.0, 0.0]).softmax(-1)[0].item()
    dog = torch.tensor([0.0, 2.0, 0.0]).softmax(-1)[1].item()
    assert response.json()["detections"] == [
        [
            {"label": "cat", "score": round(cat, 6), "box": {"xmin": 0, "ymin": 25, "xmax": 100, "ymax": 75}},
            {
                "label": "dog",
                "score": round(dog, 6),
                "box": {"xmin": 100, "ymin": 0, "xmax": 200, "ymax": 50},
            },
        ]
    ]


@pytest.mark.parametrize(
    ("path", "threshold", "says"),
    [
        (PREDICT, "-0.1", "threshold"),
        (PREDICT, "1.5", "threshold"),
        (PREDICT, "nan", "threshold"),
        ("/v1/models/tiny-vit/predict", "0.5", "threshold: only object detection and image segmentation"),
    ],
)
async def test_a_bad_threshold_is_a_422_naming_it(
    client: httpx.AsyncClient, path: str, threshold: str, says: str
) -> None:
    response = await client.post(path, content=image_bytes(), params={"threshold": threshold})
    assert response.status_code == 422, response.text
    assert says in response.json()["error"]["message"]
