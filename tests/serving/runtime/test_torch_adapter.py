"""The bring-your-own-model adapter: a plain torch classifier from a folder, and the shipped EfficientNet."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from service.serving.manifests import ModelManifest
from service.serving.runtime import load_adapter
from tests.conftest import REPO, write_manifest

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


def write_colour_model(folder: Path) -> Path:
    """The colour classifier's source folder, `folder`/colour."""
    source = folder / "colour"
    source.mkdir(parents=True)
    (source / "build.py").write_text(textwrap.dedent(BUILD_PY))
    (source / "labels.txt").write_text("red\ngreen\nblue\n")
    return source


def write_colour_manifest(models_dir: Path, name: str = "colour", resize: int = 256) -> None:
    """A manifest in `models_dir` serving the colour classifier (its folder next to it) with
    EfficientNet's preprocessing: the shorter side resized to `resize`, a 224 centre crop."""
    write_manifest(
        models_dir,
        name,
        f"""
        name: {name}
        task: image-classification
        adapter: torch
        source: colour
        entrypoint: build.py:build
        labels: labels.txt
        preprocess: {{resize: {resize}, crop_size: 224, interpolation: bicubic}}
        """,
    )


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    return write_colour_model(tmp_path)


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


def test_the_size_an_image_is_resized_to_is_known_before_decoding(colour_folder: Path) -> None:
    pre = {"resize": 256, "crop_size": 224, "mean": [0, 0, 0], "std": [1, 1, 1]}
    adapter = load_adapter(manifest(preprocess=pre), colour_folder.parent, torch.device("cpu"), torch.float32)
    assert adapter.resized_size(640, 480) == (341, 256)
    assert adapter.resized_size(100, 100) == (256, 256)
    assert adapter.resized_size(1, 6000) == (256, 1_536_000)  # why a thin image once took 1.4 GB
    assert adapter.resized_size(1000, 10) == (25_600, 256)
    assert adapter.preprocess(Image.new("RGB", (640, 480))).shape == (1, 3, 224, 224)


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
