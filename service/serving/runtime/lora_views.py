"""LoRA fine-tunes as models over one loaded classifier (service/serving/runtime/multi_lora.py):
`LoraHost` runs a batch that mixes the base's own inputs with inputs for any of its resident
adapters in one forward pass, each row scored with its own head and label set; `LoraView` is one
adapter seen as a model (what its replica's adapter is): its inputs are prepared by the base,
tagged with its name, and queued in the base replica's batches."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any, ClassVar

import torch
from PIL import Image

from service.serving.runtime.base import Classification, InputKind, ModelAdapter, Output, top_k_ranked
from service.serving.runtime.multi_lora import LoraInput, LoraWeights, MultiLoraModel, UnsupportedAdapter
from service.serving.runtime.text_classification import TextClassificationAdapter
from service.serving.runtime.transformers_adapter import ImageClassificationAdapter

Classifier = ImageClassificationAdapter | TextClassificationAdapter
DEFAULT_HEAD = "classifier"  # what the trainer saves in full next to the adapter


def can_host(adapter: ModelAdapter) -> bool:
    """Whether LoRA adapters can be served over this loaded model: a transformers classifier run
    eagerly (a compiled forward pass would not see the adapters' layers)."""
    compiled = adapter.compile_state is not None and adapter.compile_state.active
    return isinstance(adapter, (ImageClassificationAdapter, TextClassificationAdapter)) and not compiled


class LoraHost:
    """The LoRA adapters resident over one replica of a base classifier. Its methods run on the
    replica's own threads (those that run its batches); a batch with adapter rows and adding or
    removing an adapter take turns (`lock`: a GPU replica may run two batches at once)."""

    def __init__(self, base: Classifier, head_path: str | None) -> None:
        self.base = base
        try:
            self.model = MultiLoraModel(base.pipe.model, head_path or DEFAULT_HEAD)
        except AttributeError as exc:  # no module at the head's path
            raise UnsupportedAdapter(f"the base model has no classifier head {head_path!r}") from exc
        self.labels: dict[str, tuple[list[str], bool]] = {}  # adapter -> its labels, multi-label
        self.lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self.labels)

    def add(self, name: str, weights: LoraWeights) -> None:
        labels = weights.labels if weights.head else self.base.labels
        with self.lock:
            self.model.add(name, weights)
            self.labels[name] = (labels, self.base.is_multi_label(len(labels)))

    def remove(self, name: str) -> None:
        with self.lock:
            self.model.remove(name)
            self.labels.pop(name, None)

    @torch.inference_mode()
    def predict(self, features: list[Any], *, top_k: int) -> list[Output]:
        """One forward pass over a batch of the base's inputs and `LoraInput`s, in any mix."""
        names = [f.adapter if isinstance(f, LoraInput) else None for f in features]
        if not any(names):
            return self.base.predict(features, top_k=top_k)
        plain = [f.features if isinstance(f, LoraInput) else f for f in features]
        with self.lock:
            slots = [0 if n is None else self.model.slot(n) for n in names]
            scoring = [
                (self.base.labels, self.base.multi_label) if n is None else self.labels[n] for n in names
            ]
            with self.model.routed(slots, self.base.device):
                logits = self.base.logits(plain)
        rows: dict[tuple[int, bool], list[int]] = defaultdict(list)  # heads scored alike: ranked at once
        for row, (labels, multi) in enumerate(scoring):
            rows[len(labels), multi].append(row)
        outputs: list[Output] = [[] for _ in features]
        for (width, multi), where in rows.items():
            ranked = top_k_ranked(logits[where, :width], top_k=top_k, multi_label=multi)
            for row, classes in zip(where, ranked, strict=True):
                labels = scoring[row][0]
                outputs[row] = [Classification(labels[i], score) for score, i in classes]
        return outputs


class LoraView(ModelAdapter):
    """One resident LoRA adapter of `host`, as a model."""

    output_key = "predictions"

    def __init__(self, host: LoraHost, name: str) -> None:
        super().__init__(host.base.device, host.base.dtype)
        self.host = host
        self.name = name
        self.labels = host.labels[name][0]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def queued(self, features: Any) -> LoraInput:
        return LoraInput(self.name, features)

    def preprocess(self, item: Any) -> Any:
        return self.host.base.preprocess(item)

    def predict(self, features: list[Any], *, top_k: int) -> list[Output]:
        return self.host.predict([self.queued(f) for f in features], top_k=top_k)

    def warmup_input(self) -> Any:
        return self.host.base.warmup_input()


class ImageLoraView(LoraView):
    input_kind: ClassVar[InputKind] = "image"

    @property
    def image_processor(self) -> Any:
        """The base's (what a preprocessing process runs)."""
        base = self.host.base
        assert isinstance(base, ImageClassificationAdapter)
        return base.image_processor

    def draft(self, image: Image.Image) -> None:
        self.host.base.draft(image)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        return self.host.base.resized_size(width, height)


class TextLoraView(LoraView):
    input_kind: ClassVar[InputKind] = "text"


def view_of(host: LoraHost, name: str) -> LoraView:
    """The resident adapter `name` of `host` as a model of its base's input kind."""
    if isinstance(host.base, ImageClassificationAdapter):
        return ImageLoraView(host, name)
    return TextLoraView(host, name)
