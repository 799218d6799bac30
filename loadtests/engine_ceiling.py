"""How many inputs a second the model process itself can take, with HTTP, keys, metering and
decoding out of the way: the ceiling that several front-end workers (`MAAS_WORKERS`) run into on a
fast device, where the model process, which every input crosses, is the one busy process.

    python loadtests/engine_ceiling.py                      # very small ViT, 4 simulated workers
    python loadtests/engine_ceiling.py --clients 8 --concurrency 256 --devices cuda:0

It starts the real `maas serve` with `MAAS_WORKERS=2` (its own two front-end workers stay idle),
finds its model process's socket, and connects `--clients` connections to it as front-end workers
do (`EngineClient`, each with its own shared-memory arena). Each sends the calls a worker sends for
a one-image request (the arrival notice, then `infer` with the decoded uint8 pixels in shared
memory) in a closed loop, `--concurrency` calls in flight in all. It prints the calls answered per
second, their p50 and p99, and the CPU the model process used per input, as the OS counts it (its
event loop, its forward threads, its metering: everything), against the driver's own. On a CPU
the driver competes with the model process for the cores: the CPU per input is the number to
compare between versions; the rate is the ceiling only where the driver has cores to spare.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: siblings import flat
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # and the gateway's own modules

import psutil
from PIL import Image
from servers import gateway_settings, start_server
from workload import phase_model, phase_parser

from service.engine.client import EngineClient
from service.serving.fairqueue import Share
from service.serving.runtime.base import TaskParams

MODEL = "bench"  # the manifest name servers.py gives the model


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = phase_parser(__doc__)
    parser.set_defaults(model="tiny")
    parser.add_argument("--clients", type=int, default=4, help="connections, as front-end workers")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight, over all clients")
    parser.add_argument("--devices", default="cpu", help="the gateway's --devices")
    parser.add_argument("--dtype", default="float32", help="the manifest's dtype (auto: float16 on CUDA)")
    parser.add_argument("--tenants", type=int, default=8, help="tenants the calls are spread over")
    parser.add_argument(
        "--maas-env", action="append", default=[], metavar="MAAS_NAME=VALUE", help="a gateway setting"
    )
    args = parser.parse_args(argv)
    args.maas_env = gateway_settings(parser, args.maas_env)
    return args


def find_engine(root_pid: int, timeout_s: float = 30.0) -> tuple[psutil.Process, Path]:
    """The model process among `root_pid`'s descendants, and the Unix socket it listens on."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in psutil.Process(root_pid).children(recursive=True):
            for connection in child.net_connections(kind="unix"):
                if str(connection.laddr).endswith("engine.sock"):
                    return child, Path(connection.laddr)
        time.sleep(0.2)  # the model process is still starting: polling, not timing
    raise SystemExit("no model process found: is MAAS_WORKERS above 1?")


async def _pixels(client: EngineClient, jpeg: bytes) -> Any:
    """The uint8 pixels a worker would send for `jpeg`, by the plan the model process gives it."""
    info = await client.call("model", name=MODEL, deadline=None)
    plan = info.processor
    image = Image.open(io.BytesIO(jpeg))
    plan.draft(image)
    return plan.pixels(image.convert("RGB")).numpy()


def drive_engine(
    root_pid: int,
    jpeg: bytes,
    *,
    clients: int,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    tenants: int = 8,
) -> dict[str, Any]:
    """The model process among `root_pid`'s descendants driven as `clients` front-end workers
    would drive it, `concurrency` one-image calls of `jpeg` in flight: calls/s, p50, p99, its CPU."""
    process, path = find_engine(root_pid)
    return asyncio.run(_drive(path, jpeg, process, clients, concurrency, duration_s, warmup_s, tenants))


async def _drive(
    path: Path,
    jpeg: bytes,
    process: psutil.Process,
    clients_count: int,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    tenants: int,
) -> dict[str, Any]:
    clients = [EngineClient(path, worker=100 + i, shared_bytes=16 << 20) for i in range(clients_count)]
    for client in clients:
        await client.start(timeout_s=30)
    pixels = await _pixels(clients[0], jpeg)
    latencies: list[float] = []
    recording = False
    stop = False

    async def loop(index: int) -> None:
        client = clients[index % len(clients)]
        share = Share(tenant=f"tenant-{index % tenants}")
        while not stop:
            started = time.perf_counter()
            client.notify("arrive", model=MODEL, delta=1)
            with client.crossing([pixels]) as features:
                await client.call(
                    "infer",
                    model=MODEL,
                    features=features,
                    params=TaskParams(),
                    top_k=5,
                    deadline=time.monotonic() + 30,
                    share=share,
                    arrived=True,
                )
            if recording:
                latencies.append(time.perf_counter() - started)

    loops = [asyncio.create_task(loop(i)) for i in range(concurrency)]
    await asyncio.sleep(warmup_s)  # unmeasured: batch sizes settle
    me = psutil.Process()
    engine_cpu, own_cpu, began = _cpu(process), _cpu(me), time.perf_counter()
    recording = True
    await asyncio.sleep(duration_s)  # the measured window
    recording = False
    seconds = time.perf_counter() - began
    engine_used, own_used = _cpu(process) - engine_cpu, _cpu(me) - own_cpu
    stop = True
    await asyncio.gather(*loops)
    for client in clients:
        await client.close()
    answered = len(latencies)
    ordered = sorted(latencies)
    return {
        "clients": clients_count,
        "concurrency": concurrency,
        "calls_per_s": round(answered / seconds, 1),
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p99_ms": round(1000 * ordered[int(0.99 * (answered - 1))], 2),
        "engine_cores": round(engine_used / seconds, 2),
        "engine_ms_per_input": round(1000 * engine_used / answered, 3),
        "driver_cores": round(own_used / seconds, 2),
    }


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    model_dir, jpegs = phase_model(args)
    env = {"MAAS_WORKERS": "2", **args.maas_env}
    with tempfile.TemporaryDirectory(prefix="maas-engine-ceiling-") as work:
        server = start_server(
            "maas",
            model_dir,
            Path(work),
            jpegs[0],
            max_batch_size=args.max_batch_size,
            max_delay_ms=args.max_delay_ms,
            devices=args.devices,
            dtype=args.dtype,
            maas_env=env,
        )
        try:
            result = drive_engine(
                server.process.pid,
                jpegs[0],
                clients=args.clients,
                concurrency=args.concurrency,
                duration_s=args.duration,
                warmup_s=args.warmup,
                tenants=args.tenants,
            )
        finally:
            server.stop()
    print(
        f"{args.model} on {args.devices}, {args.clients} clients, {args.concurrency} calls in flight, "
        f"{args.duration:.0f} s: {result['calls_per_s']:.1f} calls/s (one image each), "
        f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms; model process "
        f"{result['engine_cores']:.2f} cores, {result['engine_ms_per_input']:.3f} ms of CPU per input; "
        f"driver {result['driver_cores']:.2f} cores"
    )


if __name__ == "__main__":
    main()
