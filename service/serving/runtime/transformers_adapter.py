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

from service.serving.manifests import ModelManifest
from service.serving.runtime.base import InputKind, ModelAdapter, Output, pooled, top_k_classes
from service.serving.runtime.classifiers import load_classifier, load_preprocessor
from service.serving.runtime.image_features import ImageFeatureExtractionAdapter
from service.serving.runtime.image_segmentation import ImageSegmentationAdapter
from service.serving.runtime.images import ImageAdapter
from service.serving.runtime.object_detection import ObjectDetectionAdapter
from service.serving.runtime.sources import ResolvedSource
from service.serving.runtime.text_classification import TextClassificationAdapter
from service.serving.runtime.token_classification import TokenClassificationAdapter
from service.serving.runtime.zero_shot import ZeroShotImageClassificationAdapter

log = logging.getLogger(__name__)

# transformers builds a model under torch.set_default_dtype(<the dtype asked for>) and puts the old
# default back after: that default is process-wide, so two loads at once in different threads (a
# replica loading while a fine-tune builds its model) can leave the whole process on bfloat16.
# Every load asks for torch's own default and casts the model afterwards.
LOAD_DTYPE = torch.float32


def load_pipeline(
    manifest: ModelManifest, source: ResolvedSource, device: torch.device, dtype: torch.dtype
) -> Any:
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # bars would flood the log

    model_kwargs = {"local_files_only": True} if source.local_files_only else {}
    pipe: Any = pipeline(
        manifest.task,
        model=source.location,
        device=device,
        dtype=LOAD_DTYPE,
        model_kwargs=model_kwargs,
    )
    pipe.model.to(dtype=dtype)
    return pipe


def load_lora_pipeline(
    task: str, adapter: ResolvedSource, base: ResolvedSource, device: torch.device, dtype: torch.dtype
) -> Any:
    """An image- or text-classification pipeline from a base model and a PEFT (LoRA) adapter
    folder: the base is loaded with the adapter's label set, the adapter (and its classifier head)
    applied and merged into the weights, so a forward pass costs what the base's does."""
    from peft import PeftModel
    from transformers import pipeline

    folder = Path(adapter.location)
    labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    # the head comes from the adapter
    model = load_classifier(task, base.location, labels, local_files_only=base.local_files_only)
    merged = PeftModel.from_pretrained(model, folder).merge_and_unload()
    preprocessor = load_preprocessor(task, folder)
    merged.to(device=device, dtype=dtype)
    if task == "text-classification":
        return pipeline("text-classification", model=merged, tokenizer=preprocessor, device=device)
    return pipeline("image-classification", model=merged, image_processor=preprocessor, device=device)


class ImageClassificationAdapter(ImageAdapter):
    output_key = "predictions"

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype, *, fast: bool = True) -> None:
        super().__init__(pipe, device, dtype, fast=fast)
        config = pipe.model.config
        self.labels = [str(config.id2label[i]) for i in range(len(config.id2label))]
        self.multi_label = self.is_multi_label(len(self.labels))

    def is_multi_label(self, labels: int) -> bool:
        """Whether a head of `labels` classes over this model scores with a sigmoid per class."""
        return bool(self.pipe.model.config.problem_type == "multi_label_classification")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def model_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.pipe.model(pixel_values=pixels).logits
        return logits

    def logits(self, features: list[torch.Tensor]) -> torch.Tensor:
        """One eager forward pass (never the compiled one): the batch's logits, one row per input."""
        return self.model_forward(self.pixel_batch(features))

    @torch.inference_mode()
    def predict(self, features: list[torch.Tensor], *, top_k: int) -> list[Output]:
        logits = self.forward(self.pixel_batch(features))
        return list(top_k_classes(logits, self.labels, top_k=top_k, multi_label=self.multi_label))


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
        hidden = self.pipe.model(**encoded).last_hidden_state
        mask = encoded["attention_mask"]
        return list(pooled(hidden, mask, pooling=self.pooling, normalize=self.normalize))

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
        pipe = load_lora_pipeline(manifest.task, source, base, device, dtype)
    else:
        pipe = load_pipeline(manifest, source, device, dtype)
    pipe.model.eval()
    fast = manifest.preprocessing == "fast"
    adapter: ModelAdapter
    if manifest.task == "image-classification":
        adapter = ImageClassificationAdapter(pipe, device, dtype, fast=fast)
    elif manifest.task == "image-feature-extraction":
        adapter = ImageFeatureExtractionAdapter(
            pipe, device, dtype, fast=fast, pooling=manifest.pooling, normalize=manifest.normalize
        )
    elif manifest.task == "zero-shot-image-classification":
        adapter = ZeroShotImageClassificationAdapter(
            pipe, device, dtype, fast=fast, template=manifest.hypothesis_template
        )
    elif manifest.task == "object-detection":
        adapter = ObjectDetectionAdapter(pipe, device, dtype)
    elif manifest.task == "image-segmentation":
        adapter = ImageSegmentationAdapter(pipe, device, dtype)
    elif manifest.task == "text-classification":
        adapter = TextClassificationAdapter(pipe, device, dtype)
    elif manifest.task == "token-classification":
        adapter = TokenClassificationAdapter(pipe, device, dtype)
    else:
        return FeatureExtractionAdapter(
            pipe, device, dtype, pooling=manifest.pooling, normalize=manifest.normalize
        )
    if isinstance(adapter, ImageAdapter):
        adapter.decode_jpegs_on_device(manifest.gpu_jpeg_decode)
        how = "fast (uint8, normalised on the device)" if adapter.plan else "the model's image processor"
        log.info("model %s: image preprocessing: %s; %s", manifest.name, how, adapter.jpeg_decoding)
    return adapter
