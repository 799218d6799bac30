"""`zero-shot-image-classification` (CLIP, SigLIP): an image and the request's candidate labels ->
the labels with scores, best first.

The batch's images go through the vision tower once, whatever labels each request brought; the
text tower runs once per distinct label set (each label put in the manifest's hypothesis
template), and its embeddings are kept in an LRU cache, so a label set asked again costs no text
pass. Each image's logits against its own labels are then scored by the pipeline's own
postprocessing (a softmax over the labels, or a sigmoid per label for SigLIP)."""

from __future__ import annotations

import collections
from typing import Any, ClassVar

import torch

from service.serving.runtime.base import Classification, Output, TaskParams, WithParams
from service.serving.runtime.images import ImageAdapter

LABEL_SETS_CACHED = 256  # text embeddings of this many label sets per replica


class ZeroShotImageClassificationAdapter(ImageAdapter):
    pipelined = False  # its tokenizer and label cache serve one batch at a time
    output_key = "predictions"
    reads_params: ClassVar[frozenset[str]] = frozenset({"candidate_labels"})

    def __init__(
        self, pipe: Any, device: torch.device, dtype: torch.dtype, *, fast: bool = True, template: str
    ) -> None:
        super().__init__(pipe, device, dtype, fast=fast)
        self.template = template
        # SigLIP's text tower reads fixed-length inputs, as the pipeline pads them
        siglip = "siglip" in pipe.model.config.model_type
        self.tokenizer_kwargs: dict[str, Any] = (
            {"padding": "max_length", "max_length": 64, "truncation": True}
            if siglip
            else {"padding": True, "truncation": True}  # truncated: the pipeline would fail instead
        )
        # only the replica's thread calls predict, so the cache needs no lock
        self._texts: collections.OrderedDict[tuple[str, ...], torch.Tensor] = collections.OrderedDict()

    def text_embeddings(self, labels: tuple[str, ...]) -> torch.Tensor:
        """The normalised text embeddings of `labels` (one row each), from the cache or the text tower."""
        cached = self._texts.get(labels)
        if cached is not None:
            self._texts.move_to_end(labels)
            return cached
        sentences = [self.template.format(label) for label in labels]
        encoded = self.pipe.tokenizer(sentences, return_tensors="pt", **self.tokenizer_kwargs)
        embeds: torch.Tensor = self.pipe.model.get_text_features(**encoded.to(self.device)).pooler_output
        embeds = embeds / embeds.norm(p=2, dim=-1, keepdim=True)
        self._texts[labels] = embeds
        if len(self._texts) > LABEL_SETS_CACHED:
            self._texts.popitem(last=False)
        return embeds

    @torch.inference_mode()
    def predict(self, features: list[WithParams], *, top_k: int) -> list[Output]:
        model = self.pipe.model
        images = model.get_image_features(pixel_values=self.pixel_batch([f.features for f in features]))
        images = images.pooler_output
        images = images / images.norm(p=2, dim=-1, keepdim=True)
        scale = model.logit_scale.exp()
        bias = getattr(model, "logit_bias", None)  # SigLIP's
        outputs: list[Output] = []
        for image, item in zip(images, features, strict=True):
            labels = item.params.candidate_labels
            logits = (self.text_embeddings(labels) @ image) * scale
            if bias is not None:
                logits = logits + bias
            ranked = self.pipe.postprocess({"candidate_labels": list(labels), "logits": logits.float()[None]})
            outputs.append([Classification(r["label"], round(float(r["score"]), 6)) for r in ranked])
        return outputs

    def warmup(self) -> None:
        item = WithParams(self.preprocess(self.warmup_input()), TaskParams(candidate_labels=("a", "b")))
        self.predict([item], top_k=1)
        self._texts.clear()
