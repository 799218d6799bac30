"""What `maas serve`'s processes cost, forked from their template (`MAAS_PROCESS_TEMPLATE=true`,
the default) or spawned (`false`), in turns: each process's memory after serving, the time from
`maas serve` to its first answer, and the time a killed worker, then a killed model process, take
to serve again.

    python loadtests/process_template.py
    python loadtests/process_template.py --model tiny --workers 6 --rounds 3

Each round starts a gateway with `--workers` workers per setting, drives it for `--duration`
seconds at concurrency 16 so that every worker has served, then reads every process's memory from
/proc/PID/smaps_rollup (Linux): USS, the pages only that process holds, and PSS, its share of the
pages it shares (the PSS of all processes adds up to what the gateway holds in all). Then it kills
one worker (SIGKILL) and times until its replacement serves (uvicorn's start-up line), and kills
the model process and times until a prediction is answered again (the model loaded and warmed up
anew). Starts are noisy: the medians of the rounds are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: siblings import flat

import psutil
from loadgen import build_request, run_closed_loop, send_once
from servers import RunningServer, start_server
from workload import phase_model, phase_parser

SETTINGS = {"template": "true", "spawned": "false"}  # MAAS_PROCESS_TEMPLATE
STARTED = "Application startup complete"  # uvicorn's line: a worker is serving


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = phase_parser(__doc__)
    parser.set_defaults(duration=5.0, warmup=1.0)
    parser.add_argument("--workers", type=int, default=2, help="MAAS_WORKERS")
    parser.add_argument("--rounds", type=int, default=2, help="starts per setting")
    parser.add_argument("--json", type=Path, help="also write every round here")
    return parser.parse_args(argv)


def memory_mib(pid: int) -> dict[str, float]:
    """USS (private pages), PSS (a share of the shared ones) and RSS of `pid`, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split()[:2]
        fields[name.rstrip(":")] = int(value) / 1024
    uss = fields["Private_Clean"] + fields["Private_Dirty"]
    return {"uss": uss, "pss": fields["Pss"], "rss": fields["Rss"]}


def roles(server: RunningServer) -> dict[int, str]:
    """Every process of the gateway (pid: role): the supervisor, the model process, the workers
    (as their start-up lines name them), the template, multiprocessing's helpers."""
    log = server.log_path.read_text(errors="replace")
    workers = {int(pid): f"worker {index}" for index, pid in re.findall(r"worker (\d+) \(pid (\d+)\)", log)}
    engine = re.findall(r"model process \(pid (\d+)\) ready", log)
    found = {server.process.pid: "supervisor"}
    for child in psutil.Process(server.process.pid).children(recursive=True):
        command = " ".join(child.cmdline())
        if child.pid in workers:
            found[child.pid] = workers[child.pid]
        elif engine and child.pid == int(engine[-1]):
            found[child.pid] = "model process"
        elif "forkserver" in command:
            found[child.pid] = "template"
        elif "resource_tracker" in command:
            found[child.pid] = "resource tracker"
    return found


def _seconds_until(
    server: RunningServer, done: Callable[[], bool], what: str, timeout_s: float = 240.0
) -> float:
    """Seconds until `done()` holds, polled; `what` names it if it never does."""
    started = time.monotonic()
    while not done():
        if time.monotonic() - started > timeout_s or server.process.poll() is not None:
            raise SystemExit(f"{what} did not come back:\n{server.log_tail()}")
        time.sleep(0.02)  # polling for the replacement, not a timing assumption
    return time.monotonic() - started


def one_round(args: argparse.Namespace, folder: Path, bodies: list[bytes], template: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="maas-process-template-") as tmp:
        started = time.monotonic()
        server = start_server(
            "maas",
            folder,
            Path(tmp),
            bodies[0],
            max_batch_size=args.max_batch_size,
            max_delay_ms=args.max_delay_ms,
            maas_env={"MAAS_WORKERS": str(args.workers), "MAAS_PROCESS_TEMPLATE": template},
            log_level="info",  # the processes' start-up lines name them
        )
        try:
            first_answer_s = time.monotonic() - started
            requests = [build_request(server.predict_url, b, headers=server.headers) for b in bodies]
            load = asyncio.run(
                run_closed_loop(
                    server.predict_url,
                    requests,
                    concurrency=16,
                    duration_s=args.duration,
                    warmup_s=args.warmup,
                )
            )
            processes = {pid: {"role": role, **memory_mib(pid)} for pid, role in roles(server).items()}
            workers = [p for p in processes.values() if p["role"].startswith("worker")]
            if len(workers) != args.workers:
                raise SystemExit(f"found {len(workers)} workers, not {args.workers}: {processes}")
            serving = server.log_path.read_text(errors="replace").count(STARTED)
            victim = next(pid for pid, p in processes.items() if p["role"] == "worker 0")
            os.kill(victim, signal.SIGKILL)
            restart_s = _seconds_until(  # its replacement's start-up line
                server,
                lambda: server.log_path.read_text(errors="replace").count(STARTED) > serving,
                "a worker",
            )
            engine = next(pid for pid, p in processes.items() if p["role"] == "model process")
            os.kill(engine, signal.SIGKILL)
            engine_back_s = _seconds_until(  # answered 200 again (503 while it is away)
                server,
                lambda: asyncio.run(send_once(server.predict_url, requests[0])).status == 200,
                "the model process",
            )
        finally:
            server.stop()
    return {
        "first_answer_s": first_answer_s,
        "restart_s": restart_s,
        "engine_back_s": engine_back_s,
        "throughput": load.throughput,
        "worker_uss": statistics.median(p["uss"] for p in workers),
        "worker_pss": statistics.median(p["pss"] for p in workers),
        "total_pss": sum(p["pss"] for p in processes.values()),
        "processes": list(processes.values()),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    folder, bodies = phase_model(args)
    print(f"{args.model}, MAAS_WORKERS={args.workers}, {args.rounds} start(s) per setting, in turns")
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
    for round_ in range(1, args.rounds + 1):
        order = list(SETTINGS) if round_ % 2 else list(reversed(SETTINGS))
        for name in order:
            result = one_round(args, folder, bodies, SETTINGS[name])
            rounds[name].append(result)
            print(
                f"round {round_} {name:8s} first answer {result['first_answer_s']:5.1f} s, "
                f"worker back {result['restart_s']:5.2f} s, "
                f"model process back {result['engine_back_s']:5.1f} s, "
                f"worker USS {result['worker_uss']:6.1f} MiB, "
                f"PSS {result['worker_pss']:6.1f}, gateway PSS {result['total_pss']:7.1f} MiB, "
                f"{result['throughput']:.1f} img/s"
            )
            for process in result["processes"]:
                print(
                    f"    {process['role']:17s} USS {process['uss']:7.1f}  PSS {process['pss']:7.1f}  "
                    f"RSS {process['rss']:7.1f} MiB"
                )
    print(
        "\n| processes | first answer, s | killed worker back, s | killed model process back, s "
        "| worker USS, MiB | worker PSS, MiB | gateway PSS, MiB | img/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, results in rounds.items():
        cells = [
            statistics.median(r[key] for r in results)
            for key in (
                "first_answer_s",
                "restart_s",
                "engine_back_s",
                "worker_uss",
                "worker_pss",
                "total_pss",
                "throughput",
            )
        ]
        label = f"{name} (MAAS_PROCESS_TEMPLATE={SETTINGS[name]})"
        print(
            f"| {label} | {cells[0]:.1f} | {cells[1]:.2f} | {cells[2]:.1f} | {cells[3]:.0f} | {cells[4]:.0f} "
            f"| {cells[5]:.0f} | {cells[6]:.1f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "rounds": rounds}, indent=2, default=str
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
