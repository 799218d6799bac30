"""`MAAS_CPU_LINEAR`: a float32 model on a CPU with its encoder's Linear layers packed for oneDNN
answers as torch's default does, holds its weights once, and a model that reads a packed weight
itself is put back as it was."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

from service.serving.manifests import ModelManifest
from service.serving.residency import loaded_bytes
from service.serving.runtime import load_adapter
from service.serving.runtime.cpu_linear import onednn_wanted, pack_checked
from service.serving.runtime.transformers_adapter import ImageClassificationAdapter

CPU = torch.device("cpu")
needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(),  # type: ignore[no-untyped-call]
    reason="this torch is built without oneDNN",
)


def manifest(folder: Path, task: str = "image-classification") -> ModelManifest:
    return ModelManifest.model_validate(
        {"name": "m", "task": task, "source": str(folder), "dtype": "float32"}
    )


def load(folder: Path, cpu_linear: Any, dtype: torch.dtype = torch.float32) -> ImageClassificationAdapter:
    adapter = load_adapter(manifest(folder), folder, CPU, dtype, cpu_linear=cpu_linear)
    assert isinstance(adapter, ImageClassificationAdapter)
    return adapter


def linears(adapter: ImageClassificationAdapter) -> dict[str, nn.Linear]:
    return {n: m for n, m in adapter.pipe.model.named_modules() if isinstance(m, nn.Linear)}


@needs_onednn
def test_packed_layers_answer_as_torchs_default_at_every_batch_size(tiny_vit_dir: Path) -> None:
    plain, packed = load(tiny_vit_dir, "default"), load(tiny_vit_dir, "onednn")
    layers = linears(packed)
    assert [n for n, m in layers.items() if m.weight.is_mkldnn] == [n for n in layers if n != "classifier"]
    assert not any(m.weight.is_mkldnn for m in linears(plain).values())
    assert packed.linear_kernels is not None and plain.linear_kernels is not None
    assert (packed.linear_kernels.kernels, packed.linear_kernels.packed_layers) == ("onednn", len(layers) - 1)
    assert (plain.linear_kernels.kernels, plain.linear_kernels.packed_layers) == ("default", 0)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9), (200, 180, 20)]
    features = [plain.preprocess(Image.new("RGB", (40 + 4 * i, 32), c)) for i, c in enumerate(colours)]
    with torch.inference_mode():
        for size in (1, 2, 5):
            want, got = plain.logits(features[:size]), packed.logits(features[:size])
            assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert packed.predict(features, top_k=3) == plain.predict(features, top_k=3)


@needs_onednn
def test_a_packed_model_holds_and_counts_its_weights_once(tiny_vit_dir: Path) -> None:
    plain, packed = load(tiny_vit_dir, "default"), load(tiny_vit_dir, "onednn")

    def held(adapter: ImageClassificationAdapter) -> int:
        entry = SimpleNamespace(replicas=[SimpleNamespace(adapter=adapter)])
        return loaded_bytes(entry)  # type: ignore[arg-type]

    assert held(packed) == held(plain) > 0
    assert len(list(packed.pipe.model.parameters())) == len(list(plain.pipe.model.parameters()))


def test_only_float32_models_are_packed(tiny_vit_dir: Path) -> None:
    adapter = load(tiny_vit_dir, "onednn", torch.bfloat16)
    assert not any(m.weight.is_mkldnn for m in linears(adapter).values())
    assert adapter.linear_kernels is None  # oneDNN runs bfloat16 already


def test_torchs_default_packs_nothing(tiny_vit_dir: Path) -> None:
    assert not any(m.weight.is_mkldnn for m in linears(load(tiny_vit_dir, "default")).values())


class ReadsItsWeight(nn.Module):
    """A model whose forward reads a Linear's weight itself (as some custom heads do)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(nn.functional.linear(x, self.proj.weight, self.proj.bias))


@needs_onednn
def test_a_model_the_packed_layers_break_is_put_back_as_it_was() -> None:
    torch.manual_seed(0)
    model, x = ReadsItsWeight().eval(), torch.randn(3, 6)
    with torch.inference_mode():
        want = model(x)
    weights = [model.proj.weight, model.out.weight]
    adapter = SimpleNamespace(model=model)
    assert pack_checked(adapter, lambda: model(x), name="custom") == 0
    assert [model.proj.weight, model.out.weight] == weights  # the very same plain tensors
    assert "forward" not in vars(model.out)  # the class's own forward again
    with torch.inference_mode():
        assert torch.equal(model(x), want)


@needs_onednn
def test_a_model_that_calls_its_layers_stays_packed() -> None:
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval(), torch.randn(3, 6)
    with torch.inference_mode():
        want = model(x)
    assert pack_checked(SimpleNamespace(model=model), lambda: model(x), name="seq") == 2
    with torch.inference_mode():
        assert torch.allclose(model(x), want, atol=1e-6)


@pytest.mark.parametrize(
    ("choice", "capability", "packed"),
    [
        ("auto", "AVX512", True),  # measured faster on an Intel Xeon and an AMD EPYC
        ("auto", "AVX2", False),  # not measured: torch's default
        ("auto", "DEFAULT", False),  # an ARM CPU, say
        ("onednn", "AVX2", True),
        ("default", "AVX512", False),
    ],
)
def test_auto_packs_on_a_cpu_with_avx512(choice: Any, capability: str, packed: bool) -> None:
    if packed and not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        pytest.skip("this torch is built without oneDNN")
    wanted, reason = onednn_wanted(choice, capability=capability)
    assert wanted is packed
    assert reason
