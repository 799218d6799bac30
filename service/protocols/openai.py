"""OpenAI's embeddings API, as `POST /v1/embeddings` speaks it (docs/openai.md).

- `input`: a string or a list of strings, each one input (metered and priced as one input, like
  predict's). Token arrays are refused (422): their ids come from the tokenizer the client chose
  (tiktoken's, for OpenAI's models), which is not the served model's, so decoding them would embed
  the wrong text without a word.
- `encoding_format`: `float` (lists of numbers) or `base64` (little-endian float32 bytes; the
  `openai` client asks for it by default and decodes it).
- `dimensions`: the model's own size, or one of the sizes its manifest lists in
  `matryoshka_dimensions` (a model trained so that a prefix of its vector is an embedding too):
  the vector is cut to that many numbers and, for a normalising model, normalised again.
- `usage.prompt_tokens`: the tokens the model read, counted with its own tokenizer (special
  tokens included, after truncation); the gateway's usage (inputs, compute, cost) stands beside.
- Errors: `{"error": {"message", "type", "param", "code"}}`, with the gateway's statuses; `type`
  is `invalid_request_error` (4xx) or `server_error` (5xx), `code` the gateway's error type.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.bounds import Name, Ref
from service.errors import GatewayError, InvalidInput
from service.protocols import parse_body
from service.serving.registry import ModelEntry

EMBEDDING_TASK = "feature-extraction"


class EmbeddingRequest(BaseModel):
    """The body of `POST /v1/embeddings`."""

    model_config = ConfigDict(extra="forbid")

    model: Name = Field(min_length=1, description="An embedding model's id.")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text or a list of texts; token arrays are refused."
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="The model's size or a Matryoshka size.")
    user: Ref | None = Field(None, description="The end user's id (accepted, unused).")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    # the gateway's usage, as on predict: inputs, and when the tenant is metered compute and cost
    inputs: int | None = None
    compute_ms: float | None = None
    cost_micro: int | None = None
    cost: str | None = None


class EmbeddingList(BaseModel):
    """The answer of `POST /v1/embeddings`: one embedding per input, in input order."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class OpenAIErrorDetail(BaseModel):
    message: str
    type: Literal["invalid_request_error", "server_error"]
    param: str | None
    code: str


class OpenAIError(BaseModel):
    """OpenAI's error shape, on `/v1/embeddings`."""

    error: OpenAIErrorDetail


def error_body(error: GatewayError) -> dict[str, Any]:
    kind = "server_error" if error.status_code >= 500 else "invalid_request_error"
    detail = OpenAIErrorDetail(message=error.message, type=kind, param=error.param, code=error.error_type)
    return OpenAIError(error=detail).model_dump()


def parse_request(body: bytes) -> EmbeddingRequest:
    return parse_body(EmbeddingRequest, body)


def _invalid(param: str, message: str) -> InvalidInput:
    error = InvalidInput(message)
    error.param = param
    return error


def texts_of(request: EmbeddingRequest) -> list[str]:
    """The request's texts, in order (token arrays refused)."""
    texts = [request.input] if isinstance(request.input, str) else request.input
    strings = [text for text in texts if isinstance(text, str)]
    if len(strings) != len(texts):
        raise _invalid(
            "input",
            "token arrays are not accepted: their ids belong to the client's tokenizer, not this "
            "model's; send the texts as strings (LangChain: check_embedding_ctx_length=False)",
        )
    return strings


def check_model(entry: ModelEntry) -> None:
    """422 unless `entry` is a text embedding model (one whose manifest could not be read is
    left to inference, which answers 503 with the reason)."""
    if entry.manifest is not None and entry.manifest.task != EMBEDDING_TASK:
        raise _invalid(
            "model", f"model {entry.name!r} is not a text embedding model (its task is {entry.manifest.task})"
        )


def output_size(entry: ModelEntry, dimensions: int | None, native: int) -> int:
    """How many numbers each vector keeps: the model's `native` size, or `dimensions` where the
    model allows it (its manifest's `matryoshka_dimensions`); 422 otherwise."""
    assert entry.manifest is not None
    allowed = sorted({native, *entry.manifest.matryoshka_dimensions})
    if dimensions is None:
        return native
    if dimensions not in allowed:
        raise _invalid(
            "dimensions",
            f"model {entry.name!r} makes {native}-dimensional embeddings; dimensions may be "
            f"{', '.join(str(size) for size in allowed)}",
        )
    return dimensions


def embedding_list(
    request: EmbeddingRequest, vectors: list[list[float]], *, size: int, renormalize: bool, tokens: int
) -> dict[str, Any]:
    """The answer's JSON: each vector cut to `size` (and normalised again when `renormalize`),
    encoded as the request asked."""
    data = [
        Embedding(index=i, embedding=_encode(_cut(vector, size, renormalize), request.encoding_format))
        for i, vector in enumerate(vectors)
    ]
    usage = EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    return EmbeddingList(data=data, model=request.model, usage=usage).model_dump(exclude_none=True)


def _cut(vector: list[float], size: int, renormalize: bool) -> list[float]:
    if size >= len(vector):
        return vector
    head = vector[:size]
    if not renormalize:
        return head
    norm = math.sqrt(sum(x * x for x in head)) or 1.0
    return [round(x / norm, 7) for x in head]


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector
