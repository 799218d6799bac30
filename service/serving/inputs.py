"""Reading a predict request's inputs, and refusing bad ones before they reach a model.

Three body shapes (see docs/api.md): raw image bytes, multipart `file` parts, and JSON
`{"inputs": [...]}` (base64 images, or strings for text models). Every refusal is a 4xx
that names the input (0-based, in request order) and what was wrong with it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from service.bodies import MAX_DIGITS, bounded_stream
from service.bounds import MAX_CANDIDATE_LABELS, MAX_LABEL_CHARS, text_problem
from service.errors import InvalidInput, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from service.serving.runtime.base import InputKind, TaskParams
from service.settings import Settings

# Declared media type -> the Pillow format the bytes must have.
IMAGE_TYPES = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
    "image/bmp": "BMP",
    "image/x-ms-bmp": "BMP",
    "image/tiff": "TIFF",
}
ALLOWED_FORMATS = frozenset(IMAGE_TYPES.values())
UNTYPED = frozenset({"", "application/octet-stream"})  # sniff the bytes instead
LABELS_FIELD = "candidate_labels"  # zero-shot classification's labels: a JSON field, or form fields


@dataclass(frozen=True)
class RawInput:
    """One input as received: bytes of an image (with the type the client declared) or a string."""

    index: int
    data: bytes | str
    declared_type: str = ""


@dataclass(frozen=True)
class ImageLimits:
    """What an image may be, judged from its header before it is decoded: at most `max_pixels`
    (width x height), and no thinner than `max_aspect_ratio` to 1; and what a model's
    preprocessing makes of it may not exceed `max_pixels` either."""

    max_pixels: int
    max_aspect_ratio: float

    @classmethod
    def of(cls, settings: Settings) -> ImageLimits:
        return cls(max_pixels=settings.max_image_pixels, max_aspect_ratio=settings.max_image_aspect_ratio)


@dataclass(frozen=True)
class InputLimits:
    max_body_bytes: int
    max_inputs: int
    max_text_chars: int
    image: ImageLimits

    @classmethod
    def of(cls, settings: Settings) -> InputLimits:
        return cls(
            max_body_bytes=settings.max_body_bytes,
            max_inputs=settings.max_inputs_per_request,
            max_text_chars=settings.max_text_chars,
            image=ImageLimits.of(settings),
        )


# (width, height) of an image -> (width, height) of the largest image a model's preprocessing
# makes of it (see `ModelAdapter.resized_size`).
ResizedSize = Callable[[int, int], tuple[int, int]]


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed `limit` bytes: from
    `Content-Length` before reading, else while counting what arrives."""
    return b"".join([chunk async for chunk in bounded_stream(request, limit)])


def candidate_labels(labels: object) -> tuple[str, ...]:
    """The request's candidate labels, checked: a list of 1 to MAX_CANDIDATE_LABELS distinct
    non-empty strings of at most MAX_LABEL_CHARS characters each; 422 naming the field otherwise."""
    where = LABELS_FIELD
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise InvalidInput(f"{where}: must be a list of strings")
    if not labels:
        raise InvalidInput(f"{where}: give at least one label")
    if len(labels) > MAX_CANDIDATE_LABELS:
        raise InvalidInput(f"{where}: {len(labels)} labels; the limit is {MAX_CANDIDATE_LABELS}")
    for i, label in enumerate(labels):
        if not label.strip():
            raise InvalidInput(f"{where}[{i}]: empty label")
        if len(label) > MAX_LABEL_CHARS:
            raise InvalidInput(f"{where}[{i}]: {len(label)} characters; the limit is {MAX_LABEL_CHARS}")
        if (problem := text_problem(label)) is not None:
            raise InvalidInput(f"{where}[{i}]: {problem}")
    if len(set(labels)) < len(labels):
        twice = next(label for i, label in enumerate(labels) if label in labels[:i])
        raise InvalidInput(f"{where}: {twice!r} is given more than once")
    return tuple(labels)


async def _multipart_inputs(
    request: Request, body: bytes, kind: InputKind, limits: InputLimits
) -> tuple[list[RawInput], TaskParams]:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    # Starlette's own file cap stays well above ours, so that the count check below can say how many.
    parser = MultiPartParser(
        request.headers,
        stream(),
        max_files=max(1000, limits.max_inputs),
        max_fields=MAX_CANDIDATE_LABELS + 16,  # each candidate label is a field
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise PayloadTooLarge(
                f"more than {limits.max_inputs} inputs in one request; the limit is {limits.max_inputs}"
            ) from exc
        raise InvalidRequest(f"malformed multipart body: {exc.message}") from exc
    try:
        inputs: list[RawInput] = []
        labels: list[str] | None = None
        for name, value in form.multi_items():
            if name == LABELS_FIELD and isinstance(value, str):
                labels = [*(labels or []), value]
                continue
            if name != "file":
                raise InvalidRequest(f"unexpected form field {name!r}: send each input as a 'file' part")
            if not isinstance(value, UploadFile):
                raise InvalidInput(f"input {len(inputs)}: the 'file' part must be a file upload")
            data = await value.read()
            if kind == "text":
                inputs.append(RawInput(len(inputs), _utf8(len(inputs), data)))
            else:
                inputs.append(RawInput(len(inputs), data, _media_type(value.content_type)))
        return inputs, TaskParams(candidate_labels(labels) if labels is not None else ())
    finally:
        await form.close()


def _utf8(index: int, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input {index}: text is not valid UTF-8 ({exc})") from exc


def _json_int(digits: str) -> int:
    """A JSON integer, of at most MAX_DIGITS digits: int() of thousands of them is slow, then fails."""
    if len(digits.lstrip("-")) > MAX_DIGITS:
        raise InvalidRequest(
            f"JSON body holds a number of {len(digits.lstrip('-'))} digits; the limit is {MAX_DIGITS}"
        )
    return int(digits)


def _json_inputs(body: bytes, kind: InputKind) -> tuple[list[RawInput], TaskParams]:
    try:
        payload = json.loads(body, parse_int=_json_int)
    except RecursionError as exc:  # the parser's own bound on nesting; a valid body is 2 deep
        raise InvalidRequest("JSON body is nested too deeply") from exc
    except ValueError as exc:  # not JSON, or not UTF-8
        raise InvalidRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise InvalidRequest('JSON body must be an object like {"inputs": [...]}')
    unknown = sorted(set(payload) - {"inputs", LABELS_FIELD})
    if unknown:
        raise InvalidRequest(f"unknown JSON field(s): {', '.join(unknown)}")
    items = payload["inputs"]
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list):
        raise InvalidRequest('"inputs" must be a list of strings')
    inputs: list[RawInput] = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidInput(f"input {i}: expected a string, got {type(item).__name__}")
        if kind == "text":
            inputs.append(RawInput(i, item))
        else:
            data, declared = decode_base64(i, item)
            inputs.append(RawInput(i, data, declared))
    labels = payload.get(LABELS_FIELD)
    return inputs, TaskParams(candidate_labels(labels) if labels is not None else ())


def decode_base64(index: int, text: str) -> tuple[bytes, str]:
    """The bytes of a base64 string or `data:` URL, and the media type a data URL declares."""
    declared = ""
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidInput(f"input {index}: a data URL must be 'data:<type>;base64,<data>'")
        declared = header[5:].removesuffix(";base64").lower()
        if declared and declared not in IMAGE_TYPES:
            raise UnsupportedMediaType(f"input {index}: {declared!r} is not a supported image type")
    try:
        return base64.b64decode(text, validate=True), declared
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"input {index}: not valid base64 ({exc})") from exc


async def read_inputs(
    request: Request, kind: InputKind, limits: InputLimits, body: bytes | None = None
) -> tuple[list[RawInput], TaskParams]:
    """Parse the predict body (`body` if it was read already) into raw inputs and the task
    parameters it carries; checks sizes and counts, not image contents."""
    content_type = _media_type(request.headers.get("content-type"))
    if body is None:
        body = await read_body(request, limits.max_body_bytes)
    if not body:
        raise InvalidRequest("request body is empty: send an image, multipart files or JSON inputs")
    params = TaskParams()
    if content_type == "multipart/form-data":
        inputs, params = await _multipart_inputs(request, body, kind, limits)
    elif content_type == "application/json":
        inputs, params = _json_inputs(body, kind)
    elif kind == "image" and (content_type.startswith("image/") or content_type in UNTYPED):
        inputs = [RawInput(0, body, content_type)]
    elif kind == "text" and content_type == "text/plain":
        inputs = [RawInput(0, _utf8(0, body))]
    else:
        accepted = (
            "image/jpeg, image/png, image/webp (raw bytes), multipart/form-data or application/json"
            if kind == "image"
            else "text/plain or application/json"
        )
        shown = content_type or "no Content-Type"
        raise UnsupportedMediaType(f"{shown} is not accepted by this model; send {accepted}")
    return check_inputs(inputs, limits), params


def check_inputs(inputs: list[RawInput], limits: InputLimits) -> list[RawInput]:
    """`inputs`, once their count and each one's size are within `limits` (contents unchecked):
    the checks every request's inputs pass, whichever body shape or protocol they came in."""
    if not inputs:
        raise InvalidRequest("no inputs: send at least one image or text")
    if len(inputs) > limits.max_inputs:
        raise PayloadTooLarge(f"{len(inputs)} inputs in one request; the limit is {limits.max_inputs}")
    for item in inputs:
        if isinstance(item.data, str):
            _check_text(item, limits)
        elif not item.data:
            raise InvalidInput(f"input {item.index}: empty file")
    return inputs


def _check_text(item: RawInput, limits: InputLimits) -> None:
    assert isinstance(item.data, str)
    if not item.data.strip():
        raise InvalidInput(f"input {item.index}: empty text")
    if len(item.data) > limits.max_text_chars:
        raise PayloadTooLarge(
            f"input {item.index}: text is {len(item.data)} characters; the limit is {limits.max_text_chars}"
        )
    try:
        item.data.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON's "\ud800": a lone surrogate, which no tokenizer takes
        raise InvalidInput(
            f"input {item.index}: text is not valid Unicode (a lone surrogate"
            f" U+{ord(item.data[exc.start]):04X} at character {exc.start})"
        ) from exc


def decode_image(
    item: RawInput,
    limits: ImageLimits,
    resized: ResizedSize | None = None,
    draft: Callable[[Image.Image], None] | None = None,
) -> Image.Image:
    """Decode one image safely: check its format against its declared type, and its size, shape
    and (with `resized`, the model's) preprocessed size from the header alone, so that bombs and
    absurd shapes never get decoded; then decode it as RGB (`draft`, given the image before its
    pixels are read, may ask a JPEG for a reduced scale)."""
    return load_image(open_image(item, limits, resized), item.index, draft)


def open_image(item: RawInput, limits: ImageLimits, resized: ResizedSize | None = None) -> Image.Image:
    """`decode_image`'s checks, from the header alone: the image opened, its pixels not read yet."""
    assert isinstance(item.data, bytes)
    where = f"input {item.index}"
    declared = item.declared_type
    if declared not in UNTYPED and declared not in IMAGE_TYPES:
        raise UnsupportedMediaType(f"{where}: {declared!r} is not a supported image type")
    try:
        image = Image.open(io.BytesIO(item.data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"{where}: image has too many pixels ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise InvalidInput(f"{where}: not a recognisable image (JPEG, PNG, WebP, GIF, BMP, TIFF)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"{where}: corrupt image header ({exc})") from exc
    actual = image.format or "unknown"
    if actual not in ALLOWED_FORMATS:
        raise UnsupportedMediaType(f"{where}: {actual} images are not supported")
    if declared in IMAGE_TYPES and IMAGE_TYPES[declared] != actual:
        raise UnsupportedMediaType(f"{where}: declared {declared} but the bytes are a {actual} image")
    _check_size(where, *image.size, limits, resized)
    return image


def load_image(
    image: Image.Image, index: int, draft: Callable[[Image.Image], None] | None = None
) -> Image.Image:
    """The pixels of an image `open_image` checked, as RGB: 413 or 400 if they cannot be read."""
    with reading(index):
        if draft is not None:
            draft(image)
        image.load()
        return image if image.mode == "RGB" else image.convert("RGB")  # convert() would copy it


@contextlib.contextmanager
def reading(index: int) -> Iterator[None]:
    """Input `index`'s pixels being read (or its decoding scale set): 413 when they are too many,
    400 when they cannot be read."""
    where = f"input {index}"
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"{where}: image has too many pixels ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput(f"{where}: image is truncated or corrupt ({exc})") from exc


def _check_size(
    where: str, width: int, height: int, limits: ImageLimits, resized: ResizedSize | None
) -> None:
    if width * height > limits.max_pixels:
        raise PayloadTooLarge(
            f"{where}: image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
        )
    if width == 0 or height == 0:
        raise InvalidInput(f"{where}: image has no pixels")
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise InvalidInput(
            f"{where}: image is {width}x{height}, an aspect ratio of {ratio:.4g} to 1;"
            f" the limit is {limits.max_aspect_ratio:g} to 1"
        )
    if resized is not None:
        new_width, new_height = resized(width, height)
        if new_width * new_height > limits.max_pixels:
            pixels = new_width * new_height
            raise PayloadTooLarge(
                f"{where}: this model's preprocessing would resize the {width}x{height} image to"
                f" {new_width}x{new_height} = {pixels} pixels; the limit is {limits.max_pixels}"
            )
