"""The wire formats of protocols that existing clients speak (OpenAI's embeddings API, the Open
Inference Protocol v2): their request and response models, and the mapping between them and the
gateway's inputs and answers. One module per protocol; the routes are in service/api/."""

from __future__ import annotations

from typing import TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from service.errors import InvalidRequest, framework_error

M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], body: bytes) -> M:
    """`body` (JSON) as `model`: 400 when it is not JSON, else 422 naming each field at fault,
    the first as the error's `param`."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        problems = exc.errors()
        if problems[0]["type"] == "json_invalid":
            raise InvalidRequest(f"body is not valid JSON: {problems[0]['msg']}") from None
        error = framework_error(RequestValidationError(problems))
        error.param = str(problems[0]["loc"][0]) if problems[0]["loc"] else None
        raise error from None
