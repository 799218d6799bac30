"""Throughput with metering on vs off (`MAAS_METERING=false`) on the overhead-bound tiny model.

    python loadtests/metering_overhead.py --duration 15 --concurrency 16 --rounds 5

Starts the gateway once per mode and round (off, on, off, on, …), drives it with the closed-loop
load generator, and prints each run, the median throughput of each mode with their ratio, and the
on/off ratio of each round (neighbouring runs: the machine's drift cancels out).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: siblings import flat

from loadgen import build_request, run_closed_loop
from servers import BENCH_KEY, REPO, RunningServer, _maas_command, _wait_ready, free_port
from workload import MODELS, build_model, jpeg_bodies


def run(mode: str, model_dir: Path, work: Path, args: argparse.Namespace, jpegs: list[bytes]) -> float:
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    command = _maas_command(model_dir, work, port, args.max_batch_size, args.max_delay_ms)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env.update(
        HF_HUB_OFFLINE="1", MAAS_ADMIN_KEY=BENCH_KEY, MAAS_METERING="true" if mode == "on" else "false"
    )
    log = (work / "server.log").open("wb")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}/v1/models/bench/predict"
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    server = RunningServer("maas", process, url, headers, work / "server.log")
    try:
        _wait_ready(server, port, jpegs[0], 240)
        requests = [build_request(url, body, headers=headers) for body in jpegs]
        result = asyncio.run(
            run_closed_loop(
                url, requests, concurrency=args.concurrency, duration_s=args.duration, warmup_s=args.warmup
            )
        )
    finally:
        server.stop(grace_s=10)
        log.close()
    print(
        f"metering {mode:3}: {result.throughput:8.1f} req/s  p50 {result.percentile_ms(50):6.1f} ms  "
        f"p99 {result.percentile_ms(99):6.1f} ms  errors {result.errors}",
        flush=True,
    )
    return result.throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-delay-ms", type=float, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="maas-metering-") as tmp:
        model_dir = build_model(MODELS["tiny"], Path(tmp) / "models")
        jpegs = jpeg_bodies()
        runs: dict[str, list[float]] = {"off": [], "on": []}
        for round_ in range(args.rounds):
            for mode in ("off", "on"):
                runs[mode].append(run(mode, model_dir, Path(tmp) / f"{mode}-{round_}", args, jpegs))
    off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
    pairs = [b / a for a, b in zip(runs["off"], runs["on"], strict=True)]
    print(f"median throughput: off {off:.1f} req/s, on {on:.1f} req/s; ratio of medians {on / off:.3f}")
    each = ", ".join(f"{r:.3f}" for r in pairs)
    print(f"on/off ratio per round: {each} (median {statistics.median(pairs):.3f})")


if __name__ == "__main__":
    main()
