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
`--drivers N` spreads the clients over N driver processes, for a machine where one driver's event
loop would be the bound (a GPU server's 16 cores); `--profile FILE` records the model process over
the measured window with py-spy, where installed (collapsed stacks, one root per thread).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: siblings import flat
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # and the gateway's own modules

import psutil
from PIL import Image
from server_profile import record
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
    parser.add_argument("--drivers", type=int, default=1, help="driver processes the clients are spread over")
    parser.add_argument("--profile", type=Path, help="py-spy's record of the model process, into this file")
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
    drivers: int = 1,
    profile: Path | None = None,
) -> dict[str, Any]:
    """The model process among `root_pid`'s descendants driven as `clients` front-end workers
    would drive it, `concurrency` one-image calls of `jpeg` in flight, from `drivers` processes
    (one driver's event loop can be the bound on a machine with cores to spare): calls/s, p50,
    p99, its CPU. With `profile`, py-spy (where installed) records the model process over the
    measured window into that file, as collapsed stacks per thread."""
    process, path = find_engine(root_pid)
    context = multiprocessing.get_context("spawn")  # the caller may hold CUDA or threads
    ready, results = context.Queue(), context.Queue()
    starts = [context.Queue() for _ in range(drivers)]
    children = [
        context.Process(
            target=_driver,
            args=(path, jpeg, index, clients, drivers, concurrency, tenants, ready, starts[index], results),
            daemon=True,
        )
        for index in range(drivers)
    ]
    for child in children:
        child.start()
    try:
        for _ in children:
            ready.get(timeout=120)  # connected, pixels in hand
        begin = time.time() + 0.2 + warmup_s
        window = (begin, begin + duration_s)
        for start in starts:
            start.put(window)
        time.sleep(max(0.0, begin - time.time()))  # a load test's timed window, not a wait for state
        engine_cpu = _cpu(process)
        recorder = record_profile(process.pid, profile, duration_s) if profile else None
        time.sleep(max(0.0, window[1] - time.time()))
        engine_used = _cpu(process) - engine_cpu
        reports = [results.get(timeout=120) for _ in children]
        if recorder is not None:
            recorder.wait(timeout=60)
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    latencies = sorted(latency for report in reports for latency in report["latencies"])
    answered = len(latencies)
    return {
        "clients": clients,
        "drivers": drivers,
        "concurrency": concurrency,
        "calls_per_s": round(answered / duration_s, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[int(0.99 * (answered - 1))], 2),
        "engine_cores": round(engine_used / duration_s, 2),
        "engine_ms_per_input": round(1000 * engine_used / answered, 3),
        "driver_cores": round(sum(report["cpu"] for report in reports) / duration_s, 2),
        **({"profile": str(profile)} if profile else {}),
    }


def record_profile(pid: int, into: Path, duration_s: float) -> subprocess.Popen[bytes] | None:
    """py-spy recording `pid` for `duration_s` into `into` (collapsed stacks, one root per thread),
    or None (said on stderr) where py-spy is not installed."""
    try:
        return record(pid, duration_s, 250, into, threads=True)
    except FileNotFoundError:
        print("py-spy is not installed: no profile recorded", file=sys.stderr)
        return None


def _driver(
    path: Path,
    jpeg: bytes,
    index: int,
    clients: int,
    drivers: int,
    concurrency: int,
    tenants: int,
    ready: Any,
    start: Any,
    results: Any,
) -> None:
    """One driver process: its share of the clients and of the calls in flight."""
    own_clients = len(range(index, clients, drivers)) or 1
    own_calls = len(range(index, concurrency, drivers)) or 1
    results.put(asyncio.run(_drive(path, jpeg, index, own_clients, own_calls, tenants, ready, start)))


async def _drive(
    path: Path,
    jpeg: bytes,
    index: int,
    clients_count: int,
    concurrency: int,
    tenants: int,
    ready: Any,
    start: Any,
) -> dict[str, Any]:
    first = 100 + 1000 * index  # worker numbers distinct across drivers
    clients = [EngineClient(path, worker=first + i, shared_bytes=16 << 20) for i in range(clients_count)]
    for client in clients:
        await client.start(timeout_s=30)
    pixels = await _pixels(clients[0], jpeg)
    ready.put(index)
    began, ended = start.get()  # the measured window, in wall-clock seconds shared by the drivers
    latencies: list[float] = []

    async def loop(number: int) -> None:
        client = clients[number % len(clients)]
        share = Share(tenant=f"tenant-{number % tenants}")
        while time.time() < ended:
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
            if began <= time.time() < ended:  # answered inside the window
                latencies.append(time.perf_counter() - started)

    me = psutil.Process()
    loops = [asyncio.create_task(loop(number)) for number in range(concurrency)]
    await asyncio.sleep(max(0.0, began - time.time()))  # unmeasured warm-up: batch sizes settle
    own_cpu = _cpu(me)
    await asyncio.sleep(max(0.0, ended - time.time()))
    own_used = _cpu(me) - own_cpu
    await asyncio.gather(*loops)
    for client in clients:
        await client.close()
    return {"latencies": latencies, "cpu": own_used}


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
                drivers=args.drivers,
                profile=args.profile,
            )
        finally:
            server.stop()
    print(
        f"{args.model} on {args.devices}, {args.clients} clients ({args.drivers} driver processes), "
        f"{args.concurrency} calls in flight, "
        f"{args.duration:.0f} s: {result['calls_per_s']:.1f} calls/s (one image each), "
        f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms; model process "
        f"{result['engine_cores']:.2f} cores, {result['engine_ms_per_input']:.3f} ms of CPU per input; "
        f"driver {result['driver_cores']:.2f} cores"
    )


if __name__ == "__main__":
    main()
