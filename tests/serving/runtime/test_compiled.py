"""`compile: true`: the forward pass compiled per bucketed batch size, answering as eager does;
eager with the reason where compiling is impossible."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from service.serving.manifests import ModelManifest
from service.serving.runtime import load_adapter
from service.serving.runtime.compiled import batch_buckets, bucket_for

CPU = torch.device("cpu")
has_cxx = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "clang++", "c++")),
    reason="torch.compile on the CPU needs a C++ compiler (g++ or clang++), none here",
)


def manifest(folder: Path, *, compile: bool, max_batch_size: int = 4) -> ModelManifest:
    return ModelManifest.model_validate(
        {
            "name": "tiny",
            "task": "image-classification",
            "source": str(folder),
            "dtype": "float32",
            "compile": compile,
            "batching": {"max_batch_size": max_batch_size},
        }
    )


def scores(outputs: list[Any]) -> list[dict[str, float]]:
    return [{c.label: c.score for c in output} for output in outputs]


@pytest.mark.parametrize(
    ("largest", "buckets"),
    [(1, [1]), (2, [1, 2]), (4, [1, 2, 4]), (6, [1, 2, 4, 6]), (32, [1, 2, 4, 8, 16, 32])],
)
def test_batch_sizes_are_bucketed_up_to_the_largest(largest: int, buckets: list[int]) -> None:
    assert batch_buckets(largest) == buckets
    assert [bucket_for(n, buckets) for n in range(1, largest + 1)][-1] == largest
    assert all(bucket_for(n, buckets) >= n for n in range(1, largest + 1))


@has_cxx
def test_compiled_answers_as_eager_and_padding_rows_never_show(tiny_vit_dir: Path) -> None:
    eager = load_adapter(manifest(tiny_vit_dir, compile=False), tiny_vit_dir, CPU, torch.float32)
    compiled = load_adapter(manifest(tiny_vit_dir, compile=True), tiny_vit_dir, CPU, torch.float32)
    state = compiled.compile_state
    assert state is not None and state.active, state
    assert state.batch_sizes == [1, 2, 4]
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]
    features = [eager.preprocess(Image.new("RGB", (48, 32), c)) for c in colours]
    for size in (1, 3, 4):  # 3 rides in the 4-row graph with one row of padding
        expected = eager.predict(features[:size], top_k=5)
        got = compiled.predict(features[:size], top_k=5)
        assert len(got) == size
        for want, have in zip(scores(expected), scores(got), strict=True):
            assert want.keys() == have.keys()
            assert all(have[label] == pytest.approx(want[label], abs=1e-4) for label in want)


def test_without_a_compiler_the_model_loads_eagerly_and_says_why(
    tiny_vit_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine with no C++ compiler
    adapter = load_adapter(manifest(tiny_vit_dir, compile=True), tiny_vit_dir, CPU, torch.float32)
    state = adapter.compile_state
    assert state is not None and not state.active
    assert state.reason is not None and "C++ compiler" in state.reason
    feature = adapter.preprocess(Image.new("RGB", (48, 32), (255, 0, 0)))
    assert len(adapter.predict([feature], top_k=3)[0]) == 3


def test_compile_is_refused_for_tasks_it_does_not_cover(tiny_vit_dir: Path) -> None:
    with pytest.raises(ValueError, match="compile: true needs task image-classification"):
        ModelManifest.model_validate(
            {"name": "t", "task": "text-classification", "source": str(tiny_vit_dir), "compile": True}
        )
