"""Where a server's CPU goes under load, by function: py-spy samples every process of the server
(the gateway's supervisor, model process and front-end workers, or a reference server) while a
closed loop drives it, and prints each process's busiest functions, by own time and including
what they call.

    python loadtests/server_profile.py --model tiny --concurrency 16 --duration 15
    python loadtests/server_profile.py --server litserve
    python loadtests/server_profile.py --maas-env MAAS_WORKERS=1 --collapsed /tmp/maas.txt

Needs py-spy (`pip install py-spy`) and the right to trace the server's processes (root, or
`kernel.yama.ptrace_scope=0`). A share is of the samples of that process: 100 % of a process that
ran one core's worth is one core; idle samples (threads waiting) are left out, so each process's
shares add up to the CPU it used. `--collapsed` keeps the stacks (flamegraph.pl or speedscope read
them).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: siblings import flat

import psutil
from loadgen import build_request, run_closed_loop
from servers import SERVERS, gateway_settings, start_server
from workload import phase_model, phase_parser


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = phase_parser(__doc__)  # --duration is the sampled seconds, the batching benchmark.py's
    parser.set_defaults(model="tiny", duration=15.0, warmup=3.0)
    parser.add_argument("--server", default="maas", choices=SERVERS)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--top", type=int, default=18, help="functions shown per process and view")
    parser.add_argument("--rate", type=int, default=100, help="samples per second per process")
    parser.add_argument("--collapsed", type=Path, help="also write every process's stacks here")
    parser.add_argument(
        "--maas-env", action="append", default=[], metavar="MAAS_NAME=VALUE", help="a gateway setting"
    )
    args = parser.parse_args(argv)
    args.maas_env = gateway_settings(parser, args.maas_env)
    return args


def _frame_name(frame: str) -> str:
    """`handle (service/gateway.py:123)` -> `handle (service/gateway.py)`: lines of one function merge."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    for marker in ("site-packages/", "/service/", "/loadtests/", "lib/python3"):
        if marker in path:
            path = path[path.index(marker) :].removeprefix("site-packages/").lstrip("/")
            break
    return f"{name} ({path})" if path else name


def summarise(collapsed: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Samples, own-time and inclusive counts per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")[1:]]  # the first is the thread
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return total, own, inclusive


def record(
    pid: int, seconds: float, rate: int, output: Path, *, threads: bool = False
) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` for `seconds` into `output` as collapsed stacks (with `threads`, one
    root per OS thread). Raises FileNotFoundError where py-spy is not installed."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds)))]
    command += ["--rate", str(rate), "--format", "raw", "--nonblocking", "--output", str(output)]
    command += ["--threads"] if threads else []
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _record(pids: list[int], seconds: float, rate: int, folder: Path) -> dict[int, subprocess.Popen[bytes]]:
    return {pid: record(pid, seconds, rate, folder / f"{pid}.txt") for pid in pids}


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    folder, bodies = phase_model(args)
    with tempfile.TemporaryDirectory(prefix="maas-profile-") as tmp:
        work = Path(tmp)
        server = start_server(
            args.server,
            folder,
            work / "server",
            bodies[0],
            max_batch_size=args.max_batch_size,
            max_delay_ms=args.max_delay_ms,
            maas_env=args.maas_env,
        )
        try:
            root = psutil.Process(server.process.pid)
            processes = [root, *root.children(recursive=True)]
            names = {p.pid: " ".join(p.cmdline()[1:4])[:70] for p in processes}
            cpu_before = {p.pid: sum(p.cpu_times()[:2]) for p in processes}
            requests = [build_request(server.predict_url, b, headers=server.headers) for b in bodies]
            recorders: dict[int, subprocess.Popen[bytes]] = {}

            async def drive() -> float:
                loop = asyncio.get_running_loop()
                load = asyncio.ensure_future(
                    run_closed_loop(
                        server.predict_url,
                        requests,
                        concurrency=args.concurrency,
                        duration_s=args.duration + 1,
                        warmup_s=args.warmup,
                    )
                )
                await asyncio.sleep(args.warmup)
                recorders.update(_record(list(names), args.duration, args.rate, work))
                await asyncio.gather(*(loop.run_in_executor(None, r.wait) for r in recorders.values()))
                return (await load).throughput

            throughput = asyncio.run(drive())
            cpu_used = {
                p.pid: sum(p.cpu_times()[:2]) - cpu_before[p.pid] for p in processes if p.is_running()
            }
            # OS threads after the load: a model process's OpenMP helpers show here, one team per
            # thread that ran a parallel op (one team is the aim: docs/serving.md, intra-op threads)
            threads = {p.pid: p.num_threads() for p in processes if p.is_running()}
        finally:
            server.stop()
        print(f"{args.server} {args.model} c={args.concurrency}: {throughput:.1f} img/s while sampled")
        stacks = []
        for pid, recorder in recorders.items():
            path = work / f"{pid}.txt"
            if not path.exists():
                print(f"\n[{pid}] {names[pid]}: no samples ({recorder.stderr.read().decode()[-300:]!r})")
                continue
            text = path.read_text(encoding="utf-8")
            stacks.append(text)
            total, own, inclusive = summarise(text)
            seconds = total / args.rate
            cores = cpu_used.get(pid, 0.0) / (args.duration + args.warmup)
            per_image = 1000 * seconds / max(1.0, throughput * args.duration)
            print(
                f"\n[{pid}] {names[pid]}: {seconds / args.duration:.2f} cores sampled busy "
                f"(~{cores:.2f} by the OS over load), {per_image:.2f} ms of CPU per image, "
                f"{threads.get(pid, 0)} threads"
            )
            for title, counts in (("own", own), ("incl", inclusive)):
                for name, count in counts.most_common(args.top):
                    print(f"  {title:4} {100 * count / max(1, total):5.1f}%  {name}")
        if args.collapsed:
            args.collapsed.write_text("".join(stacks), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
