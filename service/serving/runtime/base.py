"""The model-adapter interface: load on a device once, then preprocess -> batched predict.

An adapter turns one decoded input (a PIL image or a string) into model-ready features on a
worker thread (`preprocess`), runs ONE forward pass over a list of features (`predict`), and
returns one JSON-ready output per input, in order. The engine never looks inside features.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from service.serving.runtime.compiled import CompileState
from service.serving.runtime.cpu_linear import LinearKernels

InputKind = Literal["image", "text"]


@dataclass(frozen=True)
class TaskParams:
    """A request's parameters that its task reads per input (beyond `top_k`, which ranks a whole
    batch): they travel with each input through the batcher, so that requests with different
    parameters share a batch."""

    candidate_labels: tuple[str, ...] = ()  # zero-shot classification
    threshold: float | None = None  # detection, segmentation: the lowest score a box or segment may have


@dataclass(frozen=True)
class WithParams:
    """One input's features with its request's `TaskParams`: what an adapter that reads
    parameters (`reads_params`) gets in its batch."""

    features: Any
    params: TaskParams


@dataclass(frozen=True)
class Classification:
    label: str
    score: float


# One input's output: a ranked list of classes, one embedding vector, or a list of JSON objects
# (a token classifier's entities, a detector's boxes, a segmenter's segments).
Output = list[Classification] | list[float] | list[dict[str, Any]]
OutputKey = Literal["predictions", "embeddings", "entities", "detections", "segments"]


class ModelAdapter(abc.ABC):
    """The lifecycle of one loaded model replica on one device."""

    input_kind: ClassVar[InputKind]
    output_key: ClassVar[OutputKey]  # the answer's key; "predictions" outputs are ranked (top_k)
    # the `TaskParams` fields this task reads; when any, each feature comes as `WithParams`
    reads_params: ClassVar[frozenset[str]] = frozenset()
    # whether two batches may run at once (a GPU replica keeps two in flight): `predict` shares
    # no state between calls (no tokenizer, no cache)
    pipelined: ClassVar[bool] = False

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device = device
        self.dtype = dtype
        self.compile_state: CompileState | None = None  # set by `compile` (manifest `compile: true`)
        self.linear_kernels: LinearKernels | None = None  # an eager float32 replica on a CPU: set at load

    def compile(self, max_batch_size: int, *, name: str) -> None:
        """Compile the forward pass for batches up to `max_batch_size` (see runtime/compiled.py),
        or run eagerly and say why in `compile_state`."""
        self.compile_state = CompileState(active=False, reason=f"{type(self).__name__} is not compiled")

    def draft(self, image: Any) -> None:
        """Called with an image whose header is read but whose pixels are not: a JPEG may be told
        to decode at a reduced scale (the fast image path). Does nothing by default."""
        return None

    def device_decoded(self, data: bytes, image: Any, index: int) -> Any | None:
        """Called with an image whose header passed the gateway's checks and whose pixels are not
        read yet: its features as still-encoded bytes, where the device decodes it itself (GPU
        JPEG decode); None (the default) to decode it on the CPU and `preprocess` it."""
        return None

    @abc.abstractmethod
    def preprocess(self, item: Any) -> Any:
        """Turn one decoded input into features (runs on a worker thread, off the event loop)."""

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the largest image `preprocess` makes from a width x height image,
        computed without decoding it, so that a request can be refused before preprocessing
        would blow up (an adapter that resizes keeping the aspect ratio says how far)."""
        return width, height

    def queued(self, features: Any) -> Any:
        """What the batcher carries for one input's features: the features themselves, unless the
        model runs in another model's batches (a LoRA adapter over its base) and tags them."""
        return features

    @abc.abstractmethod
    def predict(self, features: list[Any], *, top_k: int) -> list[Output]:
        """One forward pass over the batch; one output per feature, in order."""

    @abc.abstractmethod
    def warmup_input(self) -> Any:
        """A representative decoded input, run once at load so the first real request is fast."""

    def warmup(self) -> None:
        self.predict([self.preprocess(self.warmup_input())], top_k=1)

    @property
    def num_labels(self) -> int | None:
        """How many classes a classifier has (None for other tasks)."""
        return None

    @property
    def embedding_size(self) -> int | None:
        """How many numbers an embedding model's vectors have (None for other tasks)."""
        return None

    def token_counts(self, texts: list[str]) -> list[int]:
        """How many tokens of each text the model reads (special tokens included, after
        truncation), for the protocols that report tokens; only models with a tokenizer count."""
        raise NotImplementedError(f"{type(self).__name__} has no tokenizer")


def top_k_classes(
    logits: torch.Tensor, labels: list[str], *, top_k: int, multi_label: bool = False
) -> list[list[Classification]]:
    """Scores (softmax, or sigmoid for multi-label models) and the top-k classes of each row."""
    return [
        [Classification(labels[i], v) for v, i in ranked]
        for ranked in top_k_ranked(logits, top_k=top_k, multi_label=multi_label)
    ]


def top_k_ranked(
    logits: torch.Tensor, *, top_k: int, multi_label: bool = False
) -> list[list[tuple[float, int]]]:
    """`top_k_classes` as (score, class index) pairs, for rows whose heads name their classes apart."""
    scores = logits.float().sigmoid() if multi_label else logits.float().softmax(dim=-1)
    k = min(top_k, scores.shape[-1])
    values, indices = scores.topk(k, dim=-1)
    return [
        [(round(float(v), 6), i) for v, i in zip(row_v, row_i, strict=True)]
        for row_v, row_i in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def pooled(
    hidden: torch.Tensor, mask: torch.Tensor | None, *, pooling: str, normalize: bool
) -> list[list[float]]:
    """One vector per row of `hidden` (N, tokens, D): the first token's ("cls") or the mean over
    the tokens `mask` (N, tokens) marks real (all when None), L2-normed if `normalize`."""
    hidden = hidden.float()
    if pooling == "cls":
        vectors = hidden[:, 0]
    elif mask is None:
        vectors = hidden.mean(dim=1)
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        vectors = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    return [[round(v, 7) for v in row] for row in vectors.tolist()]
