"""The bring-your-own-model adapter: a plain torch classifier from a folder, and the shipped EfficientNet."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from service.serving.manifests import ModelManifest
from service.serving.runtime import load_adapter
from tests.conftest import REPO

BUILD_PY = """
import torch

class ColourNet(torch.nn.Module):
    # logits = mean of each channel: a red image is 'red', a blue one 'blue'
    def forward(self, x):
        return x.mean(dim=(2, 3)) * 10

def build():
    return ColourNet()

def not_a_model():
    return 42
"""


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "colour"
    folder.mkdir()
    (folder / "build.py").write_text(textwrap.dedent(BUILD_PY))
    (folder / "labels.txt").write_text("red\ngreen\nblue\n")
    return folder


def manifest(**overrides: object) -> ModelManifest:
    fields: dict[str, object] = {
        "name": "colour",
        "task": "image-classification",
        "adapter": "torch",
        "source": "colour",
        "entrypoint": "build.py:build",
        "labels": "labels.txt",
        "preprocess": {"resize": 8, "crop_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]},
    }
    fields.update(overrides)
    return ModelManifest.model_validate(fields)


def test_a_user_model_classifies_through_its_entrypoint_and_labels(colour_folder: Path) -> None:
    adapter = load_adapter(manifest(), colour_folder.parent, torch.device("cpu"), torch.float32)
    images = [Image.new("RGB", (20, 10), c) for c in [(250, 0, 0), (0, 0, 250), (0, 250, 0)]]
    outputs = adapter.predict([adapter.preprocess(i) for i in images], top_k=2)
    assert [o[0].label for o in outputs] == ["red", "blue", "green"]  # type: ignore[union-attr]
    assert all(len(o) == 2 for o in outputs)


def test_bfloat16_is_honoured_on_cpu(colour_folder: Path) -> None:
    adapter = load_adapter(
        manifest(dtype="bfloat16"), colour_folder.parent, torch.device("cpu"), torch.bfloat16
    )
    assert adapter.dtype is torch.bfloat16
    [[best, *_]] = adapter.predict([adapter.preprocess(Image.new("RGB", (8, 8), (0, 0, 255)))], top_k=3)
    assert best.label == "blue"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"entrypoint": "build.py:missing"}, "'missing' is not a function"),
        ({"entrypoint": "build.py:not_a_model"}, "returned int, not a Module"),
        ({"entrypoint": "../outside.py:build"}, "inside"),
        ({"entrypoint": "build.py"}, "file.py:function"),
        ({"labels": "nope.txt"}, "nope.txt"),
        ({"entrypoint": None}, "needs `entrypoint`"),
    ],
)
def test_misconfigured_user_models_fail_with_a_reason(
    colour_folder: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        load_adapter(manifest(**overrides), colour_folder.parent, torch.device("cpu"), torch.float32)


def test_shipped_efficientnet_lite0_recognises_a_cat_photo() -> None:
    from skimage import data

    from service.serving.manifests import read_manifest

    shipped = read_manifest(REPO / "models" / "efficientnet-lite0.yaml")
    adapter = load_adapter(shipped, REPO / "models", torch.device("cpu"), torch.float32)
    assert adapter.num_labels == 1000
    [top] = adapter.predict([adapter.preprocess(Image.fromarray(data.chelsea()))], top_k=3)
    assert all("cat" in c.label for c in top), top  # type: ignore[union-attr]
