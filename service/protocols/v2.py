"""The Open Inference Protocol v2 (KServe v2, Triton's HTTP API), as the `/v2` routes speak it
(docs/kserve-v2.md): its request and response models, the binary tensor data extension, and the
gateway's models as tensors:

- an image classifier takes `image`, BYTES [N] (encoded images: raw bytes as binary data, base64
  strings in JSON), and gives `label`, BYTES [N, k], and `score`, FP32 [N, k]: each image's k
  best classes, best first (k: the `top_k` request parameter, default 5, at most its classes);
- a text embedding model takes `text`, BYTES [N] (UTF-8), and gives `embedding`, FP32 [N, D].

A shape of [N, 1] is read as [N]. Outputs are JSON unless binary data is asked for, per output
(`parameters.binary_data`) or for all (`parameters.binary_data_output`). Errors are
`{"error": "<message>"}`, with the gateway's statuses.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from service.bodies import parse_decimal
from service.bounds import MAX_TOP_K, Ref
from service.errors import GatewayError, InvalidInput, InvalidRequest, ModelUnavailable
from service.protocols import parse_body
from service.serving.inference import Answer
from service.serving.inputs import RawInput, decode_base64
from service.serving.registry import INPUT_KIND, ModelEntry
from service.serving.runtime.base import InputKind

HEADER_LENGTH = "Inference-Header-Content-Length"  # the JSON part's bytes, when binary data follows
EXTENSIONS = ["binary_tensor_data"]
DEFAULT_TOP_K = 5
V2_TASKS = frozenset({"image-classification", "feature-extraction"})  # the tasks with tensors below
INPUT_NAMES: dict[InputKind, str] = {"image": "image", "text": "text"}
OUTPUT_NAMES: dict[InputKind, list[str]] = {"image": ["label", "score"], "text": ["embedding"]}

Parameter = StrictBool | StrictInt | float | str  # the protocol's $parameter: boolean, number or string
Parameters = dict[str, Parameter]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]  # -1: any size


class ModelMetadata(BaseModel):
    name: str
    platform: str  # the gateway's adapter: transformers or torch
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool


class ModelReadiness(BaseModel):
    name: str
    ready: bool


class V2Error(BaseModel):
    """The protocol's error shape, on every `/v2` route."""

    error: str


def error_body(error: GatewayError) -> dict[str, Any]:
    return V2Error(error=error.message).model_dump()


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int] = Field(max_length=8)
    datatype: str
    parameters: Parameters = {}
    data: list[Any] | None = None  # absent when the tensor is sent as binary data


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: Parameters = {}


class InferRequest(BaseModel):
    """The JSON part of `POST /v2/models/{model}/infer`."""

    model_config = ConfigDict(extra="forbid")

    id: Ref | None = None
    parameters: Parameters = {}
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: Parameters | None = None  # binary_data_size, when the data follows the JSON
    data: list[Any] | None = None


class InferResponse(BaseModel):
    """The JSON part of the answer (binary outputs follow it, `Inference-Header-Content-Length`
    giving its size); `usage` is the gateway's, as on predict."""

    model_name: str
    id: str
    outputs: list[ResponseOutput]
    usage: dict[str, Any] | None = None


@dataclass(frozen=True)
class InferCall:
    """A parsed infer request: its JSON, and each input's binary data (None: it is in the JSON)."""

    request: InferRequest
    binary: list[bytes | None]

    @property
    def top_k(self) -> int:
        top_k = self.request.parameters.get("top_k", DEFAULT_TOP_K)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
            raise InvalidInput(f"parameter top_k must be an integer from 1 to {MAX_TOP_K}")
        return top_k


def model_kind(entry: ModelEntry) -> InputKind:
    """What `entry` takes; 503 with the reason when its manifest could not be read, 400 for a
    task this protocol does not serve (the predict route serves every task)."""
    if entry.manifest is None or entry.manifest.task not in INPUT_KIND:
        raise ModelUnavailable(f"model {entry.name!r} is unavailable: {entry.reason}")
    if entry.manifest.task not in V2_TASKS:
        raise InvalidRequest(
            f"model {entry.name!r} ({entry.manifest.task}) is not served over v2; "
            f"use POST /v1/models/{entry.name}/predict"
        )
    return INPUT_KIND[entry.manifest.task]


def model_metadata(entry: ModelEntry) -> ModelMetadata:
    """The model's tensors. An embedding's size is known once the model is loaded (-1 before)."""
    kind = model_kind(entry)
    assert entry.manifest is not None
    if kind == "image":
        inputs = [TensorMetadata(name="image", datatype="BYTES", shape=[-1])]
        outputs = [
            TensorMetadata(name="label", datatype="BYTES", shape=[-1, -1]),
            TensorMetadata(name="score", datatype="FP32", shape=[-1, -1]),
        ]
    else:
        size = entry.adapter.embedding_size if entry.replicas else None
        inputs = [TensorMetadata(name="text", datatype="BYTES", shape=[-1])]
        outputs = [TensorMetadata(name="embedding", datatype="FP32", shape=[-1, size or -1])]
    return ModelMetadata(name=entry.name, platform=entry.manifest.adapter, inputs=inputs, outputs=outputs)


def parse_infer(body: bytes, header_length: str | None) -> InferCall:
    """The request in `body`: all JSON, or (binary data extension) `header_length` bytes of JSON
    followed by the binary tensors, in input order, each `parameters.binary_data_size` long."""
    binary = b""
    if header_length is not None:
        length = parse_decimal(header_length, HEADER_LENGTH)  # ASCII digits only: int() takes "²"
        if length > len(body):
            raise InvalidRequest(f"{HEADER_LENGTH} must be a number of bytes within the body's {len(body)}")
        body, binary = body[:length], body[length:]
    request = parse_body(InferRequest, body)
    tensors: list[bytes | None] = []
    offset = 0
    for tensor in request.inputs:
        size = tensor.parameters.get("binary_data_size")
        if size is None:
            if tensor.data is None:
                raise InvalidRequest(f"input {tensor.name!r} has no data (in `data` or as binary data)")
            tensors.append(None)
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or tensor.data is not None:
            raise InvalidRequest(
                f"input {tensor.name!r}: binary_data_size must be a byte count, without `data`"
            )
        if offset + size > len(binary):
            raise InvalidRequest(f"input {tensor.name!r}: the binary data ends before its {size} bytes")
        tensors.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise InvalidRequest(f"{len(binary) - offset} bytes of binary data follow the last input's")
    return InferCall(request, tensors)


def inputs_of(call: InferCall, kind: InputKind) -> list[RawInput]:
    """The request's one input tensor, as the model's inputs in order."""
    name = INPUT_NAMES[kind]
    tensors = call.request.inputs
    if len(tensors) != 1 or tensors[0].name != name:
        names = ", ".join(repr(t.name) for t in tensors)
        raise InvalidInput(f"this model takes one input, {name!r} (BYTES [N]); the request has {names}")
    tensor, binary = tensors[0], call.binary[0]
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {name!r} must be BYTES, not {tensor.datatype}")
    if not 1 <= len(tensor.shape) <= 2 or tensor.shape[1:] not in ([], [1]) or tensor.shape[0] < 0:
        raise InvalidInput(f"input {name!r} must have shape [N] or [N, 1], not {tensor.shape}")
    elements = _split_bytes(name, binary) if binary is not None else _flat(tensor.data or [])
    if len(elements) != math.prod(tensor.shape):
        raise InvalidInput(f"input {name!r}: shape {tensor.shape} does not hold {len(elements)} elements")
    return [_raw_input(i, element, kind) for i, element in enumerate(elements)]


def _raw_input(index: int, element: Any, kind: InputKind) -> RawInput:
    if kind == "text":
        if isinstance(element, bytes):
            try:
                element = element.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"input {index}: text is not valid UTF-8 ({exc})") from exc
        if not isinstance(element, str):
            raise InvalidInput(f"input {index}: expected a string, got {type(element).__name__}")
        return RawInput(index, element)
    if isinstance(element, bytes):
        return RawInput(index, element)
    if not isinstance(element, str):
        raise InvalidInput(f"input {index}: expected a base64 string, got {type(element).__name__}")
    data, declared = decode_base64(index, element)
    return RawInput(index, data, declared)


def _flat(data: list[Any]) -> list[Any]:
    """A tensor's JSON data in row-major order, flattened (the protocol allows nesting)."""
    return [x for item in data for x in (_flat(item) if isinstance(item, list) else [item])]


def _split_bytes(name: str, data: bytes) -> list[bytes]:
    """A BYTES tensor's binary form: each element a little-endian uint32 length, then its bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise InvalidInput(f"input {name!r}: binary BYTES data is cut inside an element's length")
        (size,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + size > len(data):
            raise InvalidInput(f"input {name!r}: binary BYTES data ends inside element {len(elements)}")
        elements.append(data[offset : offset + size])
        offset += size
    return elements


@dataclass(frozen=True)
class Tensor:
    """An output tensor, its values flat in row-major order."""

    name: str
    datatype: Literal["BYTES", "FP32"]
    shape: list[int]
    values: list[Any]

    def binary(self) -> bytes:
        if self.datatype == "FP32":
            return struct.pack(f"<{len(self.values)}f", *self.values)
        encoded = [value.encode("utf-8") for value in self.values]
        return b"".join(struct.pack("<I", len(value)) + value for value in encoded)


def output_tensors(kind: InputKind, answer: Answer) -> list[Tensor]:
    """The answer as the model's output tensors."""
    rows = len(answer.outputs)
    if kind == "text":
        size = len(answer.outputs[0]) if rows else 0
        return [Tensor("embedding", "FP32", [rows, size], [x for row in answer.outputs for x in row])]
    k = len(answer.outputs[0]) if rows else 0
    classes = [c for row in answer.outputs for c in row]
    return [
        Tensor("label", "BYTES", [rows, k], [c["label"] for c in classes]),
        Tensor("score", "FP32", [rows, k], [c["score"] for c in classes]),
    ]


@dataclass(frozen=True)
class InferAnswer:
    """The answer's JSON part and the binary data that follows it (empty: all JSON)."""

    body: dict[str, Any]
    binary: bytes


def requested_outputs(call: InferCall, kind: InputKind) -> list[RequestOutput]:
    """The outputs the request asks for (all when it names none), checked before the model runs."""
    names = OUTPUT_NAMES[kind]
    for output in call.request.outputs or []:
        if output.name not in names:
            raise InvalidInput(f"no output {output.name!r}: this model gives {', '.join(map(repr, names))}")
    return call.request.outputs or [RequestOutput(name=name) for name in names]


def infer_answer(
    model: str, request_id: str, call: InferCall, wanted: list[RequestOutput], tensors: list[Tensor]
) -> InferAnswer:
    """The `wanted` outputs, each in JSON or binary as the request asked."""
    by_name = {tensor.name: tensor for tensor in tensors}
    everything = call.request.parameters.get("binary_data_output", False) is True
    outputs: list[ResponseOutput] = []
    binary: list[bytes] = []
    for output in wanted:
        tensor = by_name[output.name]
        if output.parameters.get("binary_data", everything) is True:
            data = tensor.binary()
            binary.append(data)
            parameters: Parameters | None = {"binary_data_size": len(data)}
            values = None
        else:
            parameters, values = None, tensor.values
        outputs.append(
            ResponseOutput(
                name=tensor.name,
                datatype=tensor.datatype,
                shape=tensor.shape,
                parameters=parameters,
                data=values,
            )
        )
    response = InferResponse(model_name=model, id=call.request.id or request_id, outputs=outputs)
    return InferAnswer(response.model_dump(exclude_none=True), b"".join(binary))
