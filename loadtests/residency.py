"""Many models on a small memory budget: residency under a random access pattern.

    python loadtests/residency.py [--models 30] [--fits 5] [--requests 300] [--concurrency 4]

Builds `--models` tiny ViTs of different sizes from `ViTConfig` (hidden size 32 to 128, one to
three layers, float32), each with a head that answers its own name as the top label, so a model
mixed up with another would show. Starts a real `maas serve` (no models in its folder) with
`MAAS_DEVICE_MEMORY_MB` set to what `--fits` models of the mean size hold, registers every model
through the admin API (`preload: false`), then sends `--requests` predictions from
`--concurrency` closed-loop clients, each to a model drawn at random (seeded). Every answer must be
200 with the model's own name on top (a 503 because every other resident model is busy is
retried, and counted). Prints the evictions and loads (from /metrics), the p50 and
p99 of the server-side load time (each load's `load_seconds`) and of the cold requests (those that
found their model not resident, load included), the warm requests' p50, and the peak resident
bytes against the budget. docs/models.md records a run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: siblings import flat

from loadgen import build_request, send_once
from servers import REPO, free_port

KEY = "mk_residency_loadtest_admin_key_0123456789"
RETRIES = 5
RETRY_S = 0.1  # shorter than the Retry-After (1 s): the models in use are free within milliseconds
MB = 2**20


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=30, help="tiny ViTs registered")
    parser.add_argument("--fits", type=float, default=5.0, help="the budget, in models of the mean size")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results here too")
    return parser.parse_args(argv)


def build_models(root: Path, count: int) -> dict[str, Path]:
    """`count` tiny ViTs of different sizes; model `rNN` answers `rNN` as its top label."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    made: dict[str, Path] = {}
    for i in range(count):
        name = f"r{i:02d}"
        hidden = 32 + 16 * (i % 7)  # 32 .. 128
        labels = [name, "other-a", "other-b"]
        config = ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=hidden,
            num_hidden_layers=1 + i % 3,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={n: k for k, n in enumerate(labels)},
        )
        model = ViTForImageClassification(config)
        with torch.no_grad():  # its own name wins whatever the image
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([8.0, 0.0, 0.0]))
        folder = root / name
        model.save_pretrained(folder)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
        made[name] = folder
    return made


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), (40, 160, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


async def call(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
    """One JSON call (or a PNG prediction when `body` is bytes): status, parsed body, seconds."""
    raw_body = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
    content_type = "image/png" if isinstance(body, bytes) else "application/json"
    headers = {"Authorization": f"Bearer {KEY}"}
    request = build_request(base + path, raw_body, method=method, content_type=content_type, headers=headers)
    started = time.perf_counter()
    answer = await send_once(base + path, request)
    elapsed = time.perf_counter() - started
    text = answer.body.decode("utf-8", "replace")
    try:
        return answer.status, json.loads(text), elapsed
    except ValueError:
        return answer.status, text, elapsed


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples over every label set."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def drive(base: str, names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    plan = [rng.choice(names) for _ in range(args.requests)]
    image = png()
    cold: list[float] = []
    warm: list[float] = []
    loads: list[float] = []
    wrong: list[str] = []
    peak_bytes = 0.0
    retried = 0
    cursor = iter(plan)

    async def worker() -> None:
        nonlocal peak_bytes, retried
        for model in cursor:
            _, detail, _ = await call(base, "GET", f"/v1/models/{model}")
            was_ready = detail["status"] == "ready"
            for _ in range(RETRIES):  # a 503 when every other resident model is busy: Retry-After
                status, body, seconds = await call(base, "POST", f"/v1/models/{model}/predict", image)
                if status != 503:
                    break
                retried += 1
                await asyncio.sleep(RETRY_S)
            top = body["predictions"][0][0]["label"] if status == 200 else None
            if status != 200 or top != model:
                wrong.append(f"{model}: {status} {str(body)[:200]}")
            (warm if was_ready else cold).append(seconds)
            if not was_ready:
                _, after, _ = await call(base, "GET", f"/v1/models/{model}")
                if after.get("load_seconds") is not None:
                    loads.append(after["load_seconds"])
            _, text, _ = await call(base, "GET", "/metrics")
            peak_bytes = max(peak_bytes, metric(text, "maas_resident_bytes"))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    wall = time.perf_counter() - started
    _, text, _ = await call(base, "GET", "/metrics")
    return {
        "requests": len(plan),
        "wrong_or_failed": wrong,
        "retried_503": retried,
        "evictions": metric(text, "maas_model_evictions_total"),
        "loads": metric(text, "maas_model_loads_total"),
        "cold_requests": len(cold),
        "warm_requests": len(warm),
        "load_s_p50": statistics.median(loads) if loads else None,
        "load_s_p99": _p99(loads),
        "cold_request_s_p50": statistics.median(cold) if cold else None,
        "cold_request_s_p99": _p99(cold),
        "warm_request_s_p50": statistics.median(warm) if warm else None,
        "peak_resident_bytes": peak_bytes,
        "wall_s": wall,
    }


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def register(base: str, models: dict[str, Path]) -> None:
    for name, folder in models.items():
        manifest = {
            "name": name,
            "task": "image-classification",
            "source": str(folder),
            "dtype": "float32",
            "preload": False,
            "batching": {"max_batch_size": 8, "max_delay_ms": 2},
        }
        status, body, _ = await call(base, "POST", "/v1/admin/models", manifest)
        if status != 201:
            raise RuntimeError(f"registering {name}: {status} {body}")


async def wait_ready(base: str, process: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"maas serve exited with {process.returncode}")
        try:
            status, _, _ = await call(base, "GET", "/readyz")
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)  # polling for readiness, not timing anything
    raise RuntimeError("maas serve not ready in time")


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="maas-residency-") as tmp:
        work = Path(tmp)
        models = build_models(work / "weights", args.models)
        sizes = {name: weight_bytes(folder) for name, folder in models.items()}
        budget = args.fits * statistics.mean(sizes.values())
        (work / "models").mkdir()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
        env.update(
            HF_HUB_OFFLINE="1",
            MAAS_ADMIN_KEY=KEY,
            MAAS_DEVICE_MEMORY_MB=f"{budget / MB:.6f}",
            MAAS_MODEL_SYNC_S="3600",  # the registrations are made here; no periodic re-reads in the way
        )
        command = [sys.executable, "-m", "service", "serve", "--port", str(port)]
        command += ["--models-dir", str(work / "models"), "--data-dir", str(work / "var")]
        command += ["--devices", "cpu", "--log-level", "warning"]
        log_path = work / "maas.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(wait_ready(base, process))
            asyncio.run(register(base, models))
            result = asyncio.run(drive(base, list(models), args))
        finally:
            process.terminate()
            process.wait(timeout=60)
            if process.returncode not in (0, -15):
                print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
    result.update(
        models=args.models,
        budget_mb=budget / MB,
        model_mb_min=min(sizes.values()) / MB,
        model_mb_max=max(sizes.values()) / MB,
        concurrency=args.concurrency,
    )
    _report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    if result["wrong_or_failed"]:
        sys.exit(1)


def _report(r: dict[str, Any]) -> None:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value * 1000:.0f} ms"

    print(
        f"{r['models']} models of {r['model_mb_min']:.2f}-{r['model_mb_max']:.2f} MB under a budget of "
        f"{r['budget_mb']:.2f} MB; {r['requests']} requests at concurrency {r['concurrency']} "
        f"in {r['wall_s']:.1f} s"
    )
    print(f"answered correctly: {r['requests'] - len(r['wrong_or_failed'])} of {r['requests']}")
    for line in r["wrong_or_failed"][:10]:
        print(f"  wrong: {line}")
    print(
        f"loads: {r['loads']:.0f}, evictions: {r['evictions']:.0f}, "
        f"503 retried (every other resident model busy): {r['retried_503']}"
    )
    print(f"cold-load time (server, load_seconds): p50 {ms(r['load_s_p50'])}, p99 {ms(r['load_s_p99'])}")
    print(
        f"cold requests ({r['cold_requests']}): p50 {ms(r['cold_request_s_p50'])}, "
        f"p99 {ms(r['cold_request_s_p99'])}; warm requests ({r['warm_requests']}): "
        f"p50 {ms(r['warm_request_s_p50'])}"
    )
    print(f"peak resident: {r['peak_resident_bytes'] / MB:.2f} MB of {r['budget_mb']:.2f} MB")


if __name__ == "__main__":
    main()
