"""`token-classification` (named entities): texts -> entities `{entity_group, score, word, start,
end}`, grouped as the pipeline's `aggregation_strategy="simple"` groups them.

The batch is tokenised together and run in one forward pass; each text's real tokens are then
handed to the pipeline's own postprocessing (softmax, B-/I- grouping, words from the character
offsets, "O" dropped), so the entities are the pipeline's, text by text."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from service.serving.runtime.base import InputKind, ModelAdapter, Output


class TokenClassificationAdapter(ModelAdapter):
    input_kind: ClassVar[InputKind] = "text"
    output_key = "entities"

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(device, dtype)
        if not pipe.tokenizer.is_fast:
            raise ValueError("token-classification needs a fast tokenizer (it maps tokens to characters)")
        self.pipe = pipe

    @property
    def num_labels(self) -> int:
        return len(self.pipe.model.config.id2label)

    def preprocess(self, item: str) -> str:
        return item  # tokenised per batch, so that padding fits the batch's longest input

    @torch.inference_mode()
    def predict(self, features: list[str], *, top_k: int) -> list[Output]:
        from transformers.pipelines.token_classification import AggregationStrategy

        encoded = self.pipe.tokenizer(
            features,
            padding=True,
            truncation=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        offsets = encoded.pop("offset_mapping")
        special = encoded.pop("special_tokens_mask")
        logits = self.pipe.model(**encoded.to(self.device)).logits.float().cpu()
        outputs: list[Output] = []
        for i, text in enumerate(features):
            real = encoded["attention_mask"][i].cpu().bool()  # padding may be on either side
            tokens = {
                "logits": logits[i][real].unsqueeze(0),
                "input_ids": encoded["input_ids"][i].cpu()[real].unsqueeze(0),
                "offset_mapping": offsets[i][real].unsqueeze(0),
                "special_tokens_mask": special[i][real].unsqueeze(0),
                "sentence": text,
            }
            entities = self.pipe.postprocess([tokens], aggregation_strategy=AggregationStrategy.SIMPLE)
            outputs.append([_entity(e) for e in entities])
        return outputs

    def warmup_input(self) -> str:
        return "warm-up"


def _entity(found: dict[str, Any]) -> dict[str, Any]:
    return {
        "entity_group": str(found["entity_group"]),
        "score": round(float(found["score"]), 6),
        "word": str(found["word"]),
        "start": int(found["start"]),
        "end": int(found["end"]),
    }
