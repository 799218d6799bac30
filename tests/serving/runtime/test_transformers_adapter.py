"""The transformers adapter: pipelines loaded with the dtype asked for, batched predict, embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from service.serving.manifests import ModelManifest, read_manifest
from service.serving.runtime import load_adapter
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
