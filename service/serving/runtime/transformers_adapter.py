"""The main adapter: a `transformers` pipeline, loaded once per replica, run one batch per forward pass.

The pipeline does the loading (from a folder or the hub, with the dtype asked for) and owns
the preprocessing components; batching is ours, so that requests from many clients share one
forward pass instead of the pipeline's per-call loop.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from service.serving.manifests import ModelManifest
from service.serving.runtime.base import InputKind, ModelAdapter, Output, top_k_classes
from service.serving.runtime.fast_images import ImagePlan, Normalizer
from service.serving.runtime.sources import ResolvedSource

log = logging.getLogger(__name__)


def load_pipeline(
    manifest: ModelManifest, source: ResolvedSource, device: torch.device, dtype: torch.dtype
) -> Any:
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # bars would flood the log

    model_kwargs = {"local_files_only": True} if source.local_files_only else {}
    return pipeline(
        manifest.task,
        model=source.location,
        device=device,
        dtype=dtype,
        model_kwargs=model_kwargs,
    )


def load_lora_pipeline(
    adapter: ResolvedSource, base: ResolvedSource, device: torch.device, dtype: torch.dtype
) -> Any:
    """An image-classification pipeline from a base model and a PEFT (LoRA) adapter folder: the
    base is loaded with the adapter's label set, the adapter (and its classifier head) applied and
    merged into the weights, so a forward pass costs what the base's does."""
    from peft import PeftModel
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    folder = Path(adapter.location)
    labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    model = AutoModelForImageClassification.from_pretrained(
        base.location,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,  # the head comes from the adapter
        local_files_only=base.local_files_only,
    )
    merged = PeftModel.from_pretrained(model, folder).merge_and_unload()
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)  # type: ignore[no-untyped-call]
    merged.to(device=device, dtype=dtype)
    return pipeline("image-classification", model=merged, image_processor=processor, device=device)


def processor_resized_size(processor: Any, width: int, height: int) -> tuple[int, int]:
    """The size a transformers image processor (or the fast path's plan) resizes a width x height
    image to (before any crop), from its `size` settings: a fixed height and width, or the aspect
    ratio kept with a shortest and/or longest edge, or a bounding box or pixel budget."""
    if isinstance(processor, ImagePlan):
        return processor.resized(width, height)
    size = getattr(processor, "size", None)
    if not getattr(processor, "do_resize", True) or size is None:
        return width, height

    def field(name: str) -> float | None:
        value = size.get(name) if isinstance(size, dict) else getattr(size, name, None)
        return float(value) if value else None

    fixed_height, fixed_width = field("height"), field("width")
    if fixed_height and fixed_width:
        return round(fixed_width), round(fixed_height)
    scales: list[float] = []
    if shortest := field("shortest_edge"):
        crop_pct = getattr(processor, "crop_pct", None)  # ConvNeXt resizes past the crop first
        if crop_pct and shortest < 384:
            shortest /= crop_pct
        scales.append(shortest / min(width, height))
    if longest := field("longest_edge"):
        scales.append(longest / max(width, height))
    if (max_height := field("max_height")) and (max_width := field("max_width")):
        scales.append(min(max_height / height, max_width / width))
    if max_pixels := field("max_pixels"):
        scales.append((max_pixels / (width * height)) ** 0.5)
    if not scales:
        return width, height
    scale = min(scales)
    return max(1, round(width * scale)), max(1, round(height * scale))


class ImageClassificationAdapter(ModelAdapter):
    input_kind: ClassVar[InputKind] = "image"
    output_key = "predictions"

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype, *, fast: bool = True) -> None:
        super().__init__(device, dtype)
        self.pipe = pipe
        config = pipe.model.config
        self.labels = [str(config.id2label[i]) for i in range(len(config.id2label))]
        self.multi_label = config.problem_type == "multi_label_classification"
        # the fast image path where the model's processor is a standard one, else the processor
        self.plan = ImagePlan.of_processor(pipe.image_processor) if fast else None
        self.normalizer = Normalizer(self.plan, device, dtype) if self.plan is not None else None

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def image_processor(self) -> Any:
        """What turns a decoded image into features on the CPU (the fast path's plan, or the model's
        own processor): picklable, so a preprocessing process can run it."""
        return self.plan or self.pipe.image_processor

    def draft(self, image: Image.Image) -> None:
        if self.plan is not None:
            self.plan.draft(image)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        return processor_resized_size(self.image_processor, width, height)

    def preprocess(self, item: Image.Image) -> torch.Tensor:
        if self.plan is not None:
            return self.plan.pixels(item)
        pixels: torch.Tensor = self.pipe.image_processor(images=item, return_tensors="pt")["pixel_values"]
        return pixels

    @torch.inference_mode()
    def predict(self, features: list[torch.Tensor], *, top_k: int) -> list[Output]:
        batch = torch.cat(features)
        if self.normalizer is not None:
            batch = self.normalizer(batch)
        else:
            batch = batch.to(self.device, self.dtype, non_blocking=True)
        logits = self.pipe.model(pixel_values=batch).logits
        return list(top_k_classes(logits, self.labels, top_k=top_k, multi_label=self.multi_label))

    def warmup_input(self) -> Image.Image:
        return Image.new("RGB", (224, 224), (127, 127, 127))


class FeatureExtractionAdapter(ModelAdapter):
    """Sentence embeddings: token vectors pooled (mean over real tokens, or CLS), optionally L2-normed."""

    input_kind: ClassVar[InputKind] = "text"
    output_key = "embeddings"

    def __init__(
        self, pipe: Any, device: torch.device, dtype: torch.dtype, *, pooling: str, normalize: bool
    ) -> None:
        super().__init__(device, dtype)
        self.pipe = pipe
        self.pooling = pooling
        self.normalize = normalize
        # A fast tokenizer is not safe to share between threads (its truncation and padding state
        # is changed per call): token counting has its own copy, used by one thread at a time.
        self._counter = copy.deepcopy(pipe.tokenizer)
        self._counter_lock = threading.Lock()

    @property
    def embedding_size(self) -> int:
        return int(self.pipe.model.config.hidden_size)

    def token_counts(self, texts: list[str]) -> list[int]:
        with self._counter_lock:
            encoded = self._counter(texts, truncation=True)
        return [len(ids) for ids in encoded["input_ids"]]

    def preprocess(self, item: str) -> str:
        return item  # tokenised per batch, so that padding fits the batch's longest input

    @torch.inference_mode()
    def predict(self, features: list[str], *, top_k: int) -> list[Output]:
        encoded = self.pipe.tokenizer(features, padding=True, truncation=True, return_tensors="pt").to(
            self.device
        )
        hidden = self.pipe.model(**encoded).last_hidden_state.float()
        if self.pooling == "cls":
            vectors = hidden[:, 0]
        else:
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            vectors = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return [[round(v, 7) for v in row] for row in vectors.tolist()]

    def warmup_input(self) -> str:
        return "warm-up"


def load_transformers_adapter(
    manifest: ModelManifest,
    source: ResolvedSource,
    device: torch.device,
    dtype: torch.dtype,
    *,
    base: ResolvedSource | None = None,
) -> ModelAdapter:
    """`base` set: `source` is a LoRA adapter over it."""
    if base is not None:
        pipe = load_lora_pipeline(source, base, device, dtype)
    else:
        pipe = load_pipeline(manifest, source, device, dtype)
    pipe.model.eval()
    if manifest.task == "image-classification":
        adapter = ImageClassificationAdapter(pipe, device, dtype, fast=manifest.preprocessing == "fast")
        how = "fast (uint8, normalised on the device)" if adapter.plan else "the model's image processor"
        log.info("model %s: image preprocessing: %s", manifest.name, how)
        return adapter
    return FeatureExtractionAdapter(
        pipe, device, dtype, pooling=manifest.pooling, normalize=manifest.normalize
    )
