"""The transformers adapter: pipelines loaded with the dtype asked for, batched predict, embeddings."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from service.serving.manifests import ModelManifest, read_manifest
from service.serving.runtime import load_adapter
from service.serving.runtime.images import processor_resized_size
from tests.conftest import REPO, TINY_LABELS


def vit_manifest(folder: Path, dtype: str = "auto") -> ModelManifest:
    return ModelManifest.model_validate(
        {"name": "tiny", "task": "image-classification", "source": str(folder), "dtype": dtype}
    )


def colours() -> list[Image.Image]:
    return [Image.new("RGB", (48, 32), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]]


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_a_batch_answers_as_each_input_alone(
    tiny_vit_dir: Path, dtype: torch.dtype, tolerance: float
) -> None:
    adapter = load_adapter(vit_manifest(tiny_vit_dir), tiny_vit_dir, torch.device("cpu"), dtype)
    assert adapter.pipe.model.dtype is dtype  # type: ignore[attr-defined]
    features = [adapter.preprocess(image) for image in colours()]
    batched = adapter.predict(features, top_k=3)
    for feature, together in zip(features, batched, strict=True):
        [alone] = adapter.predict([feature], top_k=3)
        assert [c.label for c in alone] == [c.label for c in together]  # type: ignore[union-attr]
        for a, b in zip(alone, together, strict=True):
            assert a.score == pytest.approx(b.score, abs=tolerance)  # type: ignore[union-attr]
    assert {c.label for c in batched[0]} == set(TINY_LABELS)  # type: ignore[union-attr]


def test_shipped_minilm_embeds_similar_sentences_close_together() -> None:
    shipped = read_manifest(REPO / "models" / "all-minilm-l6-v2.yaml")
    adapter = load_adapter(shipped, REPO / "models", torch.device("cpu"), torch.float32)
    texts = [
        "How do I reset my password?",
        "I forgot my password",
        "The weather is sunny today",
        "a much longer sentence that forces the shorter ones in this batch to be padded",
    ]
    vectors = torch.tensor(adapter.predict([adapter.preprocess(t) for t in texts], top_k=1))
    assert vectors.shape == (4, 384)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(4), atol=1e-4)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3
    # padding in a batch does not change an input's embedding
    [alone] = adapter.predict([texts[0]], top_k=1)
    assert torch.allclose(torch.tensor(alone), vectors[0], atol=1e-4)


@pytest.mark.parametrize(
    ("size", "extra", "image", "resized"),
    [
        ({"height": 224, "width": 224}, {}, (1, 6000), (224, 224)),  # ViT, BEiT, SigLIP: fixed
        ({"shortest_edge": 256}, {}, (100, 3000), (256, 7680)),  # CLIP, MobileNet: aspect kept
        ({"shortest_edge": 224}, {"crop_pct": 0.875}, (100, 200), (256, 512)),  # ConvNeXt: past the crop
        ({"shortest_edge": 800, "longest_edge": 1333}, {}, (100, 3000), (44, 1333)),  # DETR: capped
        ({"longest_edge": 512}, {}, (2000, 1000), (512, 256)),
        ({"max_height": 100, "max_width": 50}, {}, (200, 200), (50, 50)),
        ({}, {}, (300, 200), (300, 200)),  # nothing it resizes by
        ({"height": 224, "width": 224}, {"do_resize": False}, (300, 200), (300, 200)),
    ],
)
def test_processor_resized_size_follows_the_processors_size(
    size: dict[str, int], extra: dict[str, object], image: tuple[int, int], resized: tuple[int, int]
) -> None:
    processor = SimpleNamespace(size=size, **extra)
    assert processor_resized_size(processor, *image) == resized


def test_the_tiny_vit_resizes_every_image_to_its_square(tiny_vit_dir: Path) -> None:
    adapter = load_adapter(vit_manifest(tiny_vit_dir), tiny_vit_dir, torch.device("cpu"), torch.float32)
    assert adapter.resized_size(1, 6000) == (32, 32)  # its SizeDict, as the pipeline loads it


def test_loading_says_which_dtype_auto_picked_and_why(
    tiny_vit_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from service.serving.devices import dtype_name, dtype_reason, resolve_dtype

    cpu = torch.device("cpu")
    picked = resolve_dtype("auto", cpu)
    with caplog.at_level("INFO", logger="service.serving.runtime"):
        load_adapter(vit_manifest(tiny_vit_dir), tiny_vit_dir, cpu, picked)
    said = f"model tiny on cpu: {dtype_reason('auto', picked, cpu)}"
    assert said in caplog.messages
    assert f"dtype auto: {dtype_name(picked)}" in said
