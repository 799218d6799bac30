"""Many LoRA adapters over one base: a batch mixing the base's inputs with inputs for several
adapters (different ranks, heads and label sets) answers what each adapter merged into its own
copy of the base answers alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from service.serving.manifests import ModelManifest
from service.serving.runtime import load_adapter
from service.serving.runtime.base import Classification, ModelAdapter
from service.serving.runtime.cpu_linear import CpuLinear
from service.serving.runtime.lora_views import LoraHost, view_of
from service.serving.runtime.multi_lora import LoraInput, UnsupportedAdapter, read_lora
from tests.lora_adapters import save_lora_adapter

CPU = torch.device("cpu")
ADAPTERS = {  # name: (labels, rank)
    "shapes": (["circle", "square"], 2),
    "moods": (["calm", "busy", "odd", "loud", "dark"], 4),
    "tints": (["warm", "cool", "grey"], 8),
}


def manifest(task: str, source: Path, base: Path | None = None) -> ModelManifest:
    return ModelManifest.model_validate(
        {
            "name": "m",
            "task": task,
            "source": str(source),
            "base_source": str(base) if base else None,
        }
    )


def images() -> list[Image.Image]:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9), (200, 180, 20), (30, 140, 160)]
    return [Image.new("RGB", (40 + 3 * i, 32), c) for i, c in enumerate(colours)]


def assert_same(got: Any, want: Any, tolerance: float = 1e-5) -> None:
    assert [c.label for c in got] == [c.label for c in want]
    for a, b in zip(got, want, strict=True):
        assert isinstance(a, Classification) and isinstance(b, Classification)
        assert a.score == pytest.approx(b.score, abs=tolerance)


def mixed_against_merged(
    task: str,
    base_dir: Path,
    folders: dict[str, Path],
    inputs: list[Any],
    dtype: torch.dtype = torch.float32,
    tolerance: float = 1e-5,
    cpu_linear: CpuLinear = "auto",
) -> None:
    """The base's Linear layers as `cpu_linear` says (runtime/cpu_linear.py); the merged copies
    with torch's default ones."""
    base = load_adapter(manifest(task, base_dir), base_dir, CPU, dtype, cpu_linear=cpu_linear)
    merged: dict[str | None, ModelAdapter] = {
        None: load_adapter(manifest(task, base_dir), base_dir, CPU, dtype, cpu_linear="default")
    }
    for name, folder in folders.items():
        merged[name] = load_adapter(
            manifest(task, folder, base_dir), folder, CPU, dtype, cpu_linear="default"
        )
    host = LoraHost(base, "classifier")  # type: ignore[arg-type]
    for name, folder in folders.items():
        host.add(name, read_lora(folder))
    names: list[str | None] = [None, *folders]
    # every input for every adapter and for the base, interleaved in one batch
    batch = [(names[(i + j) % len(names)], item) for i, item in enumerate(inputs) for j in range(len(names))]
    features = [base.preprocess(item) for _, item in batch]
    outputs = host.predict(
        [f if name is None else LoraInput(name, f) for (name, _), f in zip(batch, features, strict=True)],
        top_k=5,
    )
    for (name, _), feature, output in zip(batch, features, outputs, strict=True):
        [alone] = merged[name].predict([feature], top_k=5)
        assert_same(output, alone, tolerance)
    # one adapter's view answers as its merged copy
    view = view_of(host, "moods") if "moods" in folders else view_of(host, next(iter(folders)))
    assert view.num_labels == merged[view.name].num_labels
    for feature, output in zip(features, view.predict(features, top_k=5), strict=True):
        assert_same(output, merged[view.name].predict([feature], top_k=5)[0], tolerance)


@pytest.mark.parametrize(
    ("dtype", "tolerance", "cpu_linear"),
    [
        (torch.float32, 1e-5, "default"),
        (torch.float32, 1e-5, "onednn"),  # the base's encoder packed for oneDNN, banks over it
        (torch.bfloat16, 2e-2, "auto"),
    ],
)
def test_a_mixed_image_batch_equals_each_adapter_merged(
    tiny_vit_dir: Path, tmp_path: Path, dtype: torch.dtype, tolerance: float, cpu_linear: CpuLinear
) -> None:
    if cpu_linear == "onednn" and not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        pytest.skip("this torch is built without oneDNN")
    folders = {
        name: save_lora_adapter(tiny_vit_dir, tmp_path / name, labels, seed=n, rank=rank)
        for n, (name, (labels, rank)) in enumerate(ADAPTERS.items())
    }
    mixed_against_merged(
        "image-classification", tiny_vit_dir, folders, images(), dtype, tolerance, cpu_linear
    )


def test_a_mixed_text_batch_equals_each_adapter_merged(
    tiny_text_classifier_dir: Path, tmp_path: Path
) -> None:
    folders = {
        name: save_lora_adapter(
            tiny_text_classifier_dir, tmp_path / name, labels, seed=n, rank=rank, task="text-classification"
        )
        for n, (name, (labels, rank)) in enumerate(list(ADAPTERS.items())[:2])
    }
    texts = ["a good movie", "bob visited london and paris", "terrible", "the movie was bad and alice went"]
    mixed_against_merged("text-classification", tiny_text_classifier_dir, folders, texts)


def test_adapters_come_and_go_without_disturbing_the_others(tiny_vit_dir: Path, tmp_path: Path) -> None:
    base = load_adapter(manifest("image-classification", tiny_vit_dir), tiny_vit_dir, CPU, torch.float32)
    host = LoraHost(base, "classifier")  # type: ignore[arg-type]
    names = "stuvwxyz"  # more than the banks first make room for: they grow
    folders = {
        n: save_lora_adapter(tiny_vit_dir, tmp_path / n, ["a", "b", "c"], seed=i) for i, n in enumerate(names)
    }
    features = [base.preprocess(image) for image in images()]

    def answers() -> dict[str, Any]:
        return {n: host.predict([LoraInput(n, f) for f in features], top_k=3) for n in host.names}

    for name, folder in folders.items():
        host.add(name, read_lora(folder))
    before = answers()
    assert len({str(a) for a in before.values()}) == len(names)  # each adapter answers its own way
    host.remove("t")  # z takes t's slot
    host.remove("z")
    host.add("t", read_lora(folders["t"]))  # back, in the last slot
    assert sorted(host.names) == sorted(names[:-1])
    for name, outputs in answers().items():
        for a, b in zip(outputs, before[name], strict=True):
            assert_same(a, b)
    with pytest.raises(KeyError, match="'z' is not resident"):
        host.predict([LoraInput("z", features[0])], top_k=3)
    # the base's own inputs never see the adapters
    plain = host.predict(features, top_k=3)
    for a, b in zip(plain, base.predict(features, top_k=3), strict=True):
        assert_same(a, b)


def test_a_dora_adapter_is_refused_for_merging_instead(tiny_vit_dir: Path, tmp_path: Path) -> None:
    folder = save_lora_adapter(tiny_vit_dir, tmp_path / "dora", ["a", "b"], seed=0)
    config = (folder / "adapter_config.json").read_text(encoding="utf-8")
    (folder / "adapter_config.json").write_text(config.replace('"use_dora": false', '"use_dora": true'))
    with pytest.raises(UnsupportedAdapter, match="use_dora"):
        read_lora(folder)
