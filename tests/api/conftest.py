"""Fixtures shared by the API tests."""

from __future__ import annotations

from typing import Any

import pytest

from service.serving.runtime.base import Output
from service.serving.runtime.transformers_adapter import ImageClassificationAdapter


@pytest.fixture
def model_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many inputs each forward pass got: a spy on the image classifier, which still runs it."""
    calls: list[int] = []
    predict = ImageClassificationAdapter.predict

    def counting_predict(
        self: ImageClassificationAdapter, features: list[Any], *, top_k: int
    ) -> list[Output]:
        calls.append(len(features))
        return predict(self, features, top_k=top_k)

    monkeypatch.setattr(ImageClassificationAdapter, "predict", counting_predict)
    return calls
