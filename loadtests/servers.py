"""The servers under test, each started as a real separate process on a free port.

Every server answers `POST <predict_url>` with a raw JPEG body. A server counts as ready when one
real predict request answers 200 (for the gateway, after `/readyz` answers 200 too), so the first
measured request never pays for loading. Each process gets its own session, so stopping it
(SIGTERM, then SIGKILL after a grace period) also stops the workers it spawned.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen import build_request, send_once

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BENCH_KEY = "mk_bench_admin_key_0123456789abcdef0123456789"
SERVERS = ("maas", "litserve", "rayserve")


class ServerUnavailable(Exception):
    """The server could not be installed, started or made ready here; the message says why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A started server process: where to send predictions and with which headers."""

    name: str
    process: subprocess.Popen[bytes]
    predict_url: str
    headers: dict[str, str]
    log_path: Path
    notes: list[str] = field(default_factory=list)

    def log_tail(self, lines: int = 25) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def rss_mb(self) -> tuple[float, float]:
        """Resident memory now and at its peak (VmRSS, VmHWM) of the main process, in MiB (Linux only)."""
        values = {"VmRSS": 0.0, "VmHWM": 0.0}
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in values:
                    values[key] = int(rest.split()[0]) / 1024
        except OSError:
            pass
        return values["VmRSS"], values["VmHWM"]

    def stop(self, grace_s: float = 30.0) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever the server spawned and left behind
        self.process.wait()


def _maas_command(
    model_dir: Path,
    work: Path,
    port: int,
    max_batch_size: int,
    max_delay_ms: float,
    *,
    devices: str = "cpu",
    dtype: str = "float32",
    max_queue: int = 256,
    compile: bool = False,
    log_level: str = "warning",
) -> list[str]:
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    (models / "bench.yaml").write_text(
        textwrap.dedent(f"""\
            name: bench
            task: image-classification
            source: {model_dir}
            dtype: {dtype}
            preload: true
            compile: {str(compile).lower()}
            batching:
              max_batch_size: {max_batch_size}
              max_delay_ms: {max_delay_ms}
              max_queue: {max_queue}
        """),
        encoding="utf-8",
    )
    return [
        sys.executable,
        "-m",
        "service",
        "serve",
        "--port",
        str(port),
        "--models-dir",
        str(models),
        "--data-dir",
        str(work / "var"),
        "--devices",
        devices,
        "--log-level",
        log_level,
    ]


def gateway_settings(
    parser: argparse.ArgumentParser, items: list[str], flag: str = "--maas-env"
) -> dict[str, str]:
    """`MAAS_NAME=VALUE` items (a repeatable option) as the gateway's settings; `parser.error` on
    anything else."""
    pairs = [item.partition("=") for item in items]
    if any(not name.startswith("MAAS_") or not sep for name, sep, _ in pairs):
        parser.error(f"{flag} takes MAAS_NAME=VALUE")
    return {name: value for name, _, value in pairs}


def start_server(
    name: str,
    model_dir: Path,
    work: Path,
    jpeg: bytes,
    *,
    max_batch_size: int,
    max_delay_ms: float,
    start_timeout_s: float = 240.0,
    devices: str = "cpu",
    dtype: str = "float32",
    maas_env: dict[str, str] | None = None,
    max_queue: int = 256,
    compile: bool = False,
    log_level: str = "warning",
) -> RunningServer:
    """Start server `name` for the model in `model_dir`; returns once it has answered one prediction.
    `maas_env` adds gateway settings (MAAS_*) to the gateway's environment; `max_queue` and
    `compile` go to its manifest, `log_level` to its command line. LitServe runs on `devices` (its
    first) in `dtype` too."""
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    batching = ["--max-batch-size", str(max_batch_size), "--max-delay-ms", str(max_delay_ms)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"})
    if name == "maas":
        command = _maas_command(
            model_dir,
            work,
            port,
            max_batch_size,
            max_delay_ms,
            devices=devices,
            dtype=dtype,
            max_queue=max_queue,
            compile=compile,
            log_level=log_level,
        )
        env.update(maas_env or {})
        env["MAAS_ADMIN_KEY"] = BENCH_KEY
        url, headers, cwd = (
            f"http://127.0.0.1:{port}/v1/models/bench/predict",
            {"Authorization": f"Bearer {BENCH_KEY}"},
            REPO,
        )
    elif name in ("litserve", "rayserve"):
        package = {"litserve": "litserve", "rayserve": "ray"}[name]
        if importlib.util.find_spec(package) is None:  # looked up, not imported: keep the client light
            raise ServerUnavailable(f"{package} is not installed; pip install -e '.[bench]'")
        script = HERE / f"ref_{name}.py"
        command = [sys.executable, str(script), "--model-dir", str(model_dir), "--port", str(port), *batching]
        if name == "litserve":
            command += ["--device", devices.split(",")[0], "--dtype", dtype]
        url, headers, cwd = f"http://127.0.0.1:{port}/predict", {}, work
    else:
        raise ServerUnavailable(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")

    log_path = work / f"{name}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
        )
    server = RunningServer(name, process, url, headers, log_path)
    try:
        _wait_ready(server, port, jpeg, start_timeout_s)
    except ServerUnavailable:
        server.stop(grace_s=5)
        raise
    return server


def _wait_ready(server: RunningServer, port: int, jpeg: bytes, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    probe = build_request(server.predict_url, jpeg, headers=server.headers)
    readyz = build_request(f"http://127.0.0.1:{port}/readyz", b"", method="GET", headers={})
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerUnavailable(
                f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            if server.name == "maas":
                ready = asyncio.run(send_once(f"http://127.0.0.1:{port}/readyz", readyz))
                if ready.status != 200:
                    last = f"/readyz {ready.status}"
                    time.sleep(0.2)  # polling for readiness, not timing anything
                    continue
            answer = asyncio.run(send_once(server.predict_url, probe))
            if answer.status == 200:
                return
            last = f"predict {answer.status}: {answer.body[:300]!r}"
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise ServerUnavailable(f"{server.name} not ready in {timeout_s:.0f}s ({last}):\n{server.log_tail()}")


async def tenant_key(server: RunningServer, name: str, **plan: Any) -> dict[str, str]:
    """A new tenant `name` (with `plan`'s fields: `rate_limit_rps`, `max_concurrency`,
    `monthly_quota_inputs`, …) and a key of its own, made through the admin API: the key's headers."""
    base = server.predict_url.split("/v1/")[0]
    for path, body in (
        (f"{base}/v1/admin/tenants", {"name": name, **plan}),
        (f"{base}/v1/admin/tenants/{name}/keys", {}),
    ):
        raw = build_request(
            path, json.dumps(body).encode(), content_type="application/json", headers=server.headers
        )
        response = await send_once(path, raw)
        if response.status != 201:
            raise RuntimeError(f"{path}: {response.status} {response.body[:200]!r}")
    return {"Authorization": f"Bearer {json.loads(response.body)['key']}"}
