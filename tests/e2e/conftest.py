"""A real `maas serve` process on a free port, talked to over real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, write_manifest, write_tiny_vit

START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[str]
    base_url: str
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def wait_until_finished(http: httpx.Client, job_id: str, deadline_s: float) -> dict[str, Any]:
    """The fine-tune job once it left `queued` and `running` (fails past `deadline_s`)."""
    deadline = time.monotonic() + deadline_s
    while (job := http.get(f"/v1/fine-tunes/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)  # a poll interval, not a timing assumption
    assert isinstance(job, dict)
    return job


def tenant_key(admin: httpx.Client, name: str, **limits: Any) -> str:
    """A new tenant `name` (with `limits`) and a key of its own (its usage starts at nothing)."""
    assert admin.post("/v1/admin/tenants", json={"name": name, **limits}).status_code == 201
    made = admin.post(f"/v1/admin/tenants/{name}/keys", json={})
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


def start_server(
    models_dir: Path, data_dir: Path, *, env: dict[str, str] | None = None, args: Sequence[str] = ()
) -> Server:
    """Start `python -m service serve` (with `args` added) and return once /readyz answers 200."""
    port = free_port()
    command = [sys.executable, "-m", "service", "serve", "--port", str(port)]
    command += ["--models-dir", str(models_dir), "--data-dir", str(data_dir), "--devices", "cpu", *args]
    return launch(command, port, data_dir, env=env)


def launch(command: list[str], port: int, data_dir: Path, *, env: dict[str, str] | None = None) -> Server:
    """Run `command`, a gateway serving on `port` with its state in `data_dir`, in the folder above
    `data_dir` (no MAAS_* variables but those in `env`, the hub offline); return once /readyz
    answers 200."""
    log_path = data_dir.parent / f"server-{port}.log"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    child_env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})})
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=data_dir.parent,
            env=child_env,
        )
    server = Server(process, f"http://127.0.0.1:{port}", data_dir, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(base_url=server.base_url, timeout=5) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"maas serve exited with {process.returncode}:\n{server.log()}")
            try:
                if http.get("/readyz").status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # polling for readiness, not waiting on timing
    server.stop()
    raise RuntimeError(f"maas serve not ready in {START_TIMEOUT_S}s:\n{server.log()}")


@pytest.fixture(scope="module")
def e2e_models_dir(tmp_path_factory: pytest.TempPathFactory, tiny_vit_dir: Path) -> Path:
    """The tiny test ViT plus the shipped models (their manifests point at the repo's folders)."""
    folder = tmp_path_factory.mktemp("e2e-models")
    write_tiny_vit(folder, tiny_vit_dir, price=None, batching=None)
    write_manifest(
        folder,
        "tiny-vit-batched",
        f"""
        name: tiny-vit-batched
        task: image-classification
        source: {tiny_vit_dir}
        batching: {{max_batch_size: 8, max_delay_ms: 200}}
    """,
    )
    copy_shipped_manifests(folder)
    return folder


def copy_shipped_manifests(folder: Path, names: Sequence[str] = ("*",)) -> None:
    """Copy the shipped manifests named (all by default) into `folder`, sources pointing into the repo."""
    shipped = REPO / "models"
    for manifest in (m for name in names for m in shipped.glob(f"{name}.yaml")):
        text = manifest.read_text(encoding="utf-8")
        for line in text.splitlines():
            key, _, value = line.partition(":")
            value = value.split("#", 1)[0].strip()
            if key == "source" and (shipped / value).exists():
                text = text.replace(line, f"source: {shipped / value}")
        (folder / manifest.name).write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, e2e_models_dir: Path) -> Iterator[Server]:
    """One gateway process for the module, with no MAAS_ADMIN_KEY: it generates one."""
    running = start_server(e2e_models_dir, tmp_path_factory.mktemp("e2e") / "var")
    yield running
    running.stop()


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (its children, theirs, ...)."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # gone already
        return []
    return [p for child in children for p in (child, *descendants(child))]
