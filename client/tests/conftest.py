"""Fixtures of the client's tests: a real `maas serve` process (the repo's e2e helper), a small
real HTTP server that answers from a script and records every request it gets, and a real proxy
in front of the gateway that can drop answers (a connection lost after the gateway did the work)."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the gateway's own test helpers live in the repo's `tests` package
    sys.path.insert(0, str(REPO))

from tests.conftest import (  # noqa: E402
    TINY_LABELS,
    tiny_clip_dir,
    tiny_segformer_dir,
    tiny_text_classifier_dir,
    tiny_token_classifier_dir,
    tiny_vit_dir,
    tiny_vit_features_dir,
    tiny_yolos_dir,
    write_manifest,
    write_tiny_vit,
)
from tests.e2e.conftest import Server, start_server  # noqa: E402

# the repo's session fixtures of small models, re-exported
__all__ = [
    "TINY_LABELS",
    "tiny_clip_dir",
    "tiny_segformer_dir",
    "tiny_text_classifier_dir",
    "tiny_token_classifier_dir",
    "tiny_vit_dir",
    "tiny_vit_features_dir",
    "tiny_yolos_dir",
]
TASK_MODELS = {  # name -> task, of the small task models the gateway serves (random weights)
    "tiny-sentiment": "text-classification",
    "tiny-ner": "token-classification",
    "tiny-features": "image-feature-extraction",
    "tiny-clip": "zero-shot-image-classification",
    "tiny-detector": "object-detection",
    "tiny-segmenter": "image-segmentation",
}

ADMIN_KEY = "mk_client_suite_admin_key_0123456789abcdef"
MAX_INPUTS = 4
PRICE_MICRO = 1000  # tiny-vit's price per image, in millionths: 0.001


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: builds a fresh virtual environment (tens of seconds)")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_vit_dir: Path,
    tiny_text_classifier_dir: Path,
    tiny_token_classifier_dir: Path,
    tiny_vit_features_dir: Path,
    tiny_clip_dir: Path,
    tiny_yolos_dir: Path,
    tiny_segformer_dir: Path,
) -> Iterator[Server]:
    """One real gateway for the client suite: the tiny ViT (priced, fine-tunable), the shipped
    MiniLM embedder, small models of the other tasks (TASK_MODELS), and a model whose source is
    missing (503); at most MAX_INPUTS inputs per request. Tests share it, so each makes its own
    tenants (`unique`)."""
    models = tmp_path_factory.mktemp("client-models")
    sources = [
        tiny_text_classifier_dir,
        tiny_token_classifier_dir,
        tiny_vit_features_dir,
        tiny_clip_dir,
        tiny_yolos_dir,
        tiny_segformer_dir,
    ]
    for (name, task), source in zip(TASK_MODELS.items(), sources, strict=True):
        write_manifest(models, name, f"name: {name}\ntask: {task}\nsource: {source}\n")
    write_tiny_vit(models, tiny_vit_dir, price=f"{{per_image: {PRICE_MICRO / 1_000_000}}}", batching=None)
    write_manifest(models, "missing", "name: missing\ntask: image-classification\nsource: ./nowhere\n")
    minilm = (REPO / "models" / "all-minilm-l6-v2.yaml").read_text(encoding="utf-8")
    (models / "all-minilm-l6-v2.yaml").write_text(minilm, encoding="utf-8")
    env = {"MAAS_ADMIN_KEY": ADMIN_KEY, "MAAS_MAX_INPUTS_PER_REQUEST": str(MAX_INPUTS)}
    server = start_server(models, tmp_path_factory.mktemp("client-gateway") / "var", env=env)
    yield server
    server.stop()


def unique(prefix: str) -> str:
    """A tenant name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class RecordingSleep:
    """The client's `sleep`: really waits (the gateway's Retry-After is the point of the test)
    and records each wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(seconds)


def png(
    color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 30), fmt: str = "PNG"
) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


@dataclass
class Reply:
    """What the script server answers."""

    status: int = 200
    body: Any = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorded:
    """One request the script server got."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ScriptServer:
    """A real HTTP server on a free port: answers each (method, path) from a queue of replies
    (the last one repeats) and records every request, so tests see exactly what went on the wire."""

    def __init__(self) -> None:
        self.replies: dict[tuple[str, str], list[Reply]] = {}
        self.requests: list[Recorded] = []
        script = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                script.requests.append(Recorded(self.command, url.path, parse_qs(url.query), headers, body))
                queue = script.replies.get((self.command, url.path)) or [
                    Reply(404, {"error": {"type": "not_found"}})
                ]
                reply = queue.pop(0) if len(queue) > 1 else queue[0]
                data = b"" if reply.status == 204 else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                for name, value in {"Content-Type": "application/json", **reply.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def on(self, method: str, path: str, *replies: Reply) -> None:
        """Answer `method path` with these replies in turn (the last one repeats)."""
        self.replies[(method, path)] = list(replies)

    def attempts(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if (r.method, r.path) == (method, path)]


@pytest.fixture
def script_server() -> Iterator[ScriptServer]:
    server = ScriptServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
    server.thread.join(timeout=5)


class DroppingProxy:
    """A real HTTP proxy in front of the gateway: it forwards each request, waits for the gateway's
    whole answer, then drops the connection instead of answering for the first `drop` requests
    (a connection lost after the work was done). It records what it forwarded."""

    def __init__(self, upstream: str, drop: int) -> None:
        self.drop = drop
        self.forwarded: list[Recorded] = []
        self.answers: list[int] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "host"}
                url = urlsplit(self.path)
                proxy.forwarded.append(Recorded(self.command, url.path, parse_qs(url.query), headers, body))
                with httpx.Client(base_url=upstream, timeout=60) as http:
                    answer = http.request(self.command, self.path, headers=headers, content=body)
                proxy.answers.append(answer.status_code)
                if proxy.drop > 0:
                    proxy.drop -= 1
                    self.close_connection = True  # the gateway answered; the caller never hears it
                    return
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_DELETE = do_PATCH = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> DroppingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
