"""Bring-your-own-model adapter: a plain torch image classifier that is not on the hub.

The manifest's source folder holds a Python file with a function that returns a
`torch.nn.Module` mapping a float batch (N, 3, H, W) to logits (N, classes), and a labels
file with one class name per line. Preprocessing (resize, centre crop, normalise) comes
from the manifest's `preprocess` block.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import ClassVar

import torch
from PIL import Image

from service.serving.manifests import ModelManifest
from service.serving.runtime.base import InputKind, ModelAdapter, Output, top_k_classes
from service.serving.runtime.compiled import Forward, compile_forward
from service.serving.runtime.fast_images import ImagePlan, Normalizer
from service.serving.runtime.sources import ResolvedSource

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def _load_entrypoint(folder: Path, entrypoint: str) -> torch.nn.Module:
    file_name, sep, func_name = entrypoint.partition(":")
    path = (folder / file_name).resolve()
    if not sep or not func_name or not path.is_relative_to(folder.resolve()) or not path.is_file():
        raise ValueError(f"entrypoint {entrypoint!r}: expected 'file.py:function' inside {folder}")
    spec = importlib.util.spec_from_file_location(f"maas_user_model_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"entrypoint {entrypoint!r}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ValueError(f"entrypoint {entrypoint!r}: {func_name!r} is not a function in {path.name}")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"entrypoint {entrypoint!r} returned {type(model).__name__}, not a Module")
    return model


class TorchImageClassifierAdapter(ModelAdapter):
    input_kind: ClassVar[InputKind] = "image"
    output_key = "predictions"
    pipelined: ClassVar[bool] = True  # pixels in, one forward pass: nothing shared between batches

    def __init__(
        self,
        model: torch.nn.Module,
        labels: list[str],
        manifest: ModelManifest,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__(device, dtype)
        self.model = model.to(device=device, dtype=dtype).eval()
        self.labels = labels
        pre = manifest.preprocess
        self.crop = pre.crop_size
        # the manifest's resize, crop and normalisation: uint8 on the CPU, normalised on the device
        self.plan = ImagePlan(
            resample=int(_RESAMPLE[pre.interpolation]),
            scale=1 / 255,
            mean=pre.mean,
            std=pre.std,
            shortest_edge=pre.resize,
            crop=(pre.crop_size, pre.crop_size),
        )
        self.normalizer = Normalizer(self.plan, device, dtype)
        self.fast = manifest.preprocessing == "fast"  # else JPEGs are decoded at full scale
        self.forward: Forward = self.model  # compiled by `compile`

    def compile(self, max_batch_size: int, *, name: str) -> None:
        with torch.inference_mode():
            sample = self.normalizer(self.preprocess(self.warmup_input()))
        self.forward, self.compile_state = compile_forward(
            self.model, sample, max_batch_size, self.device, name=name
        )

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def image_processor(self) -> ImagePlan:
        """The CPU side of preprocessing, picklable for a preprocessing process."""
        return self.plan

    def draft(self, image: Image.Image) -> None:
        if self.fast:
            self.plan.draft(image)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """The shorter side scaled to the manifest's `resize` (the longer one with it), before the crop."""
        return self.plan.resized(width, height)

    def preprocess(self, item: Image.Image) -> torch.Tensor:
        return self.plan.pixels(item)

    @torch.inference_mode()
    def predict(self, features: list[torch.Tensor], *, top_k: int) -> list[Output]:
        batch = self.normalizer(torch.cat(features))
        logits = self.forward(batch)
        if logits.shape != (batch.shape[0], len(self.labels)):
            raise RuntimeError(
                f"model returned shape {tuple(logits.shape)}, expected ({batch.shape[0]}, {len(self.labels)})"
            )
        return list(top_k_classes(logits, self.labels, top_k=top_k))

    def warmup_input(self) -> Image.Image:
        return Image.new("RGB", (self.crop, self.crop), (127, 127, 127))


def load_torch_adapter(
    manifest: ModelManifest, source: ResolvedSource, device: torch.device, dtype: torch.dtype
) -> ModelAdapter:
    if manifest.task != "image-classification":
        raise ValueError("the torch adapter serves image-classification models only")
    if not source.is_local:
        raise ValueError("the torch adapter loads from a local folder, not a hub id")
    if not manifest.entrypoint or not manifest.labels:
        raise ValueError("the torch adapter needs `entrypoint` (file.py:function) and `labels`")
    folder = Path(source.location)
    labels_path = folder / manifest.labels
    try:
        labels = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise ValueError(f"labels file {manifest.labels!r}: {exc}") from exc
    labels = [label for label in labels if label]
    if len(labels) < 2:
        raise ValueError(f"labels file {manifest.labels!r} names fewer than two classes")
    model = _load_entrypoint(folder, manifest.entrypoint)
    return TorchImageClassifierAdapter(model, labels, manifest, device, dtype)
