"""A client that sends its request line and headers too slowly (slowloris) is cut off after
MAAS_HEADER_TIMEOUT_S, over raw sockets against a real `maas serve`, while other clients are served."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server, start_server

pytestmark = pytest.mark.e2e
HEADER_TIMEOUT_S = 1
BOUND_S = 30  # a socket that is never cut off fails the test here instead of hanging it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, e2e_models_dir: Path) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("slow-models")
    (folder / "tiny-vit.yaml").write_text((e2e_models_dir / "tiny-vit.yaml").read_text())
    running = start_server(
        folder,
        tmp_path_factory.mktemp("slow") / "var",
        env={
            "MAAS_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "MAAS_ADMIN_KEY": "mk_slow_clients_0123456789abcdef",
        },
    )
    yield running
    running.stop()


def connect(server: Server) -> socket.socket:
    port = int(server.base_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND_S)
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_a_half_sent_request_line_is_answered_408_and_closed_while_others_are_served(server: Server) -> None:
    with connect(server) as stalled, connect(server) as idle:
        stalled.sendall(b"GET /healthz HT")  # half a request line, then nothing
        with httpx.Client(base_url=server.base_url) as http:  # served while the slow ones hang on
            assert http.get("/healthz").status_code == 200
        answer = read_to_end(stalled)
        assert idle.recv(1) == b""  # an idle connection is closed, with nothing to answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"]["type"] == "request_timeout"
    with httpx.Client(base_url=server.base_url) as http:
        assert http.get("/healthz").status_code == 200


def test_a_request_sent_in_pieces_within_the_timeout_is_served_and_kept_alive(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        sock.sendall(b"Host: gateway\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):  # the whole first answer
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        assert read_to_end(sock).startswith(b"HTTP/1.1 200 ")
