"""Idempotency claims race safely: of many concurrent first requests with one key (each on its
own connection, as in separate replicas), exactly one runs; the others see it in progress."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.orm import Session, sessionmaker

from service.metering import ClaimState, Idempotency, request_hash


def test_concurrent_first_claims_have_exactly_one_winner(sessions: sessionmaker[Session]) -> None:
    keys = Idempotency(sessions)
    start = threading.Barrier(8)

    def claim(i: int) -> ClaimState:
        start.wait(timeout=30)
        return keys.claim("ten_a", "race", "hash", f"req_{i}").state

    with ThreadPoolExecutor(8) as pool:
        states = list(pool.map(claim, range(8)))
    assert states.count(ClaimState.NEW) == 1
    assert states.count(ClaimState.RUNNING) == 7


def test_the_request_hash_covers_model_query_media_type_and_body() -> None:
    base = request_hash("vit", "top_k=1", "image/png", b"x")
    assert base == request_hash("vit", "top_k=1", "image/png", b"x")
    others = {
        request_hash("bert", "top_k=1", "image/png", b"x"),
        request_hash("vit", "top_k=2", "image/png", b"x"),
        request_hash("vit", "top_k=1", "image/jpeg", b"x"),
        request_hash("vit", "top_k=1", "image/png", b"y"),
        request_hash("vi", "ttop_k=1", "image/png", b"x"),  # fields are length-prefixed
    }
    assert base not in others and len(others) == 5


def test_a_multipart_retry_with_a_new_boundary_hashes_the_same() -> None:
    def multipart(boundary: str, content: bytes) -> tuple[str, bytes]:
        part = b'Content-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + content
        body = b"--%s\r\n%s\r\n--%s--\r\n" % (boundary.encode(), part, boundary.encode())
        return f'multipart/form-data; boundary="{boundary}"', body

    first = request_hash("vit", "", *multipart("b1f0e2", b"png bytes"))
    assert first == request_hash("vit", "", *multipart("9c7d3a44", b"png bytes"))
    assert first != request_hash("vit", "", *multipart("9c7d3a44", b"other bytes"))
    assert first != request_hash("vit", "", "image/png", b"png bytes")
