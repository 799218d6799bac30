"""The Open Inference Protocol's wire format, checked against tritonclient's own encoder and
decoder (`generate_request_body`, `parse_response_body`) without a server: requests in JSON and
binary tensors read into the model's inputs, malformed ones refused with what was wrong, and
answers in JSON and binary read back by the client as the arrays that went in."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from service.errors import GatewayError, InvalidInput, InvalidRequest
from service.protocols import v2
from service.serving.inference import Answer


def tensor(
    name: str, values: list[Any], *, binary: bool, shape: list[int] | None = None
) -> triton.InferInput:
    made = triton.InferInput(name, shape or [len(values)], "BYTES")
    made.set_data_from_numpy(
        np.array(values, dtype=np.object_).reshape(shape or [len(values)]), binary_data=binary
    )
    return made


def request(*inputs: triton.InferInput, **options: Any) -> v2.InferCall:
    """The request as tritonclient sends it, parsed as the infer route parses it."""
    body, json_size = triton.InferenceServerClient.generate_request_body(list(inputs), **options)
    return v2.parse_infer(body, None if json_size is None else str(json_size))


@pytest.mark.parametrize("binary", [False, True])
def test_texts_arrive_in_order_in_json_and_as_binary_data(binary: bool) -> None:
    call = request(tensor("text", ["a cat", "ein Käfer", "猫"], binary=binary))
    assert [item.data for item in v2.inputs_of(call, "text")] == ["a cat", "ein Käfer", "猫"]


def test_images_arrive_as_raw_bytes_in_binary_data_and_as_base64_in_json() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # contents are checked later, by the decoder
    raw = v2.inputs_of(request(tensor("image", [png, png], binary=True)), "image")
    as_json = v2.inputs_of(
        request(tensor("image", ["iVBORw0KGgo=", "data:image/png;base64,iVBORw0KGgo="], binary=False)),
        "image",
    )
    assert [item.data for item in raw] == [png, png]
    assert [item.data for item in as_json] == [b"\x89PNG\r\n\x1a\n"] * 2
    assert as_json[1].declared_type == "image/png"


def test_a_column_shape_reads_as_a_list() -> None:
    call = request(tensor("text", ["a", "b"], binary=False, shape=[2, 1]))
    assert [item.data for item in v2.inputs_of(call, "text")] == ["a", "b"]


@pytest.mark.parametrize(
    ("make", "kind", "error", "message"),
    [
        (
            lambda: request(tensor("text", ["x"], binary=False)),
            "image",
            InvalidInput,
            "takes one input, 'image'",
        ),
        (
            lambda: request(tensor("text", ["x"], binary=False), tensor("text", ["y"], binary=False)),
            "text",
            InvalidInput,
            "takes one input",
        ),
        (
            lambda: request(tensor("text", ["x", "y"], binary=False, shape=[1, 2])),
            "text",
            InvalidInput,
            "shape",
        ),
        (lambda: request(tensor("text", [b"\xff\xfe"], binary=True)), "text", InvalidInput, "UTF-8"),
    ],
)
def test_inputs_the_model_does_not_take_are_refused(
    make: Any, kind: Any, error: type[GatewayError], message: str
) -> None:
    with pytest.raises(error, match=message):
        v2.inputs_of(make(), kind)


def test_a_datatype_other_than_bytes_is_refused() -> None:
    numbers = triton.InferInput("text", [2], "FP32")
    numbers.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32), binary_data=False)
    with pytest.raises(InvalidInput, match="must be BYTES, not FP32"):
        v2.inputs_of(request(numbers), "text")


def binary_body(data: bytes, size: int) -> tuple[bytes, str]:
    header = json.dumps(
        {
            "inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": size}}
            ]
        }
    ).encode()
    return header + data, str(len(header))


def element(text: bytes) -> bytes:
    return struct.pack("<I", len(text)) + text


def test_binary_data_follows_the_json_header() -> None:
    call = v2.parse_infer(*binary_body(element("猫".encode()), 7))
    assert [item.data for item in v2.inputs_of(call, "text")] == ["猫"]


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (binary_body(element(b"abc"), 8), InvalidRequest, "binary data ends before"),
        (binary_body(element(b"abc") + b"??", 7), InvalidRequest, "2 bytes of binary data follow"),
        ((b'{"inputs": []}', "99"), InvalidRequest, "within the body"),
        ((b'{"inputs": []}', "x"), InvalidRequest, "Inference-Header-Content-Length must be a whole number"),
        ((b'{"inputs": []}', "²"), InvalidRequest, "at most 18 ASCII digits"),  # int() would take it
        ((b'{"inputs": []}', "1" * 5000), InvalidRequest, "at most 18 ASCII digits"),
        (
            (b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]}', None),
            InvalidRequest,
            "no data",
        ),
        ((b'{"inputs": "text"}', None), InvalidInput, "inputs"),
        ((b"{", None), InvalidRequest, "not valid JSON"),
    ],
)
def test_malformed_requests_are_refused_saying_what_is_wrong(
    body: tuple[bytes, str | None], error: type[GatewayError], message: str
) -> None:
    with pytest.raises(error, match=message):
        v2.parse_infer(*body)


def test_a_binary_element_cut_short_is_refused() -> None:
    body, length = binary_body(element(b"abcdef")[:-2], 8)
    with pytest.raises(InvalidInput, match="ends inside element 0"):
        v2.inputs_of(v2.parse_infer(body, length), "text")


def test_top_k_is_a_bounded_integer() -> None:
    texts = tensor("image", ["iVBORw0KGgo="], binary=False)
    assert request(texts).top_k == 5
    assert request(texts, parameters={"top_k": 2}).top_k == 2
    for bad in (0, 1001, "3", 2.5, True):
        with pytest.raises(InvalidInput, match="top_k"):
            _ = request(texts, parameters={"top_k": bad}).top_k


CLASSES = [
    [{"label": "cat", "score": 0.75}, {"label": "dog", "score": 0.25}],
    [{"label": "dog", "score": 0.5}, {"label": "Käfer", "score": 0.125}],
]


def answer_as_client_reads_it(call: v2.InferCall, kind: Any, answer: Answer) -> triton.InferResult:
    wanted = v2.requested_outputs(call, kind)
    result = v2.infer_answer("m", "req_1", call, wanted, v2.output_tensors(kind, answer))
    body = json.dumps(result.body).encode()
    length = len(body) if result.binary else None
    return triton.InferenceServerClient.parse_response_body(body + result.binary, header_length=length)


@pytest.mark.parametrize("binary", [False, True])
def test_classes_come_back_as_label_and_score_tensors(binary: bool) -> None:
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("label", "score")]
    call = request(tensor("image", ["iVBORw0KGgo="] * 2, binary=False), outputs=outputs, request_id="mine")
    result = answer_as_client_reads_it(call, "image", Answer("predictions", CLASSES))
    labels = result.as_numpy("label")
    assert labels.shape == (2, 2)
    decoded = [[x.decode() if isinstance(x, bytes) else x for x in row] for row in labels]
    assert decoded == [["cat", "dog"], ["dog", "Käfer"]]
    assert result.as_numpy("score").tolist() == [[0.75, 0.25], [0.5, 0.125]]
    assert result.get_response()["id"] == "mine" and result.get_response()["model_name"] == "m"


def test_only_the_outputs_asked_for_come_back_and_unknown_ones_are_refused_first() -> None:
    images = tensor("image", ["iVBORw0KGgo="], binary=False)
    call = request(images, outputs=[triton.InferRequestedOutput("score", binary_data=True)])
    result = answer_as_client_reads_it(call, "image", Answer("predictions", CLASSES[:1]))
    assert [o["name"] for o in result.get_response()["outputs"]] == ["score"]
    assert result.get_response()["id"] == "req_1"  # the gateway's request id when the client sent none
    with pytest.raises(InvalidInput, match="no output 'embedding'"):
        v2.requested_outputs(request(images, outputs=[triton.InferRequestedOutput("embedding")]), "image")


def test_embeddings_come_back_as_one_float32_matrix() -> None:
    vectors = [[0.5, -0.25, 0.125], [1.0, 0.0, -1.0]]
    call = request(tensor("text", ["a", "b"], binary=True))  # no outputs named: all, as binary
    result = answer_as_client_reads_it(call, "text", Answer("embeddings", vectors))
    embedding = result.as_numpy("embedding")
    assert embedding.dtype == np.float32 and embedding.tolist() == vectors
