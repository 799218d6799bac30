"""Two gateway settings compared on a noisy machine: both servers run at once and take turns under
the same closed loop, in short alternating windows, so that a drift in the machine's speed (other
tenants of the host, its clock) falls on both alike. Prints each window and the medians, and the
ratio B/A of the medians.

    python loadtests/ab.py --b MAAS_TORCH_THREADS=1
    python loadtests/ab.py --model deit-tiny --a MAAS_WORKERS=1 --b MAAS_WORKERS=2 --rounds 8

Each window is `--duration` seconds (4) after `--warmup` (1); the batching is benchmark.py's.

Settings are MAAS_* variables (repeatable); A and B differ only in them. Only the server under load
does work: the other one sits idle between its windows.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: siblings import flat

from loadgen import build_request, run_closed_loop
from servers import RunningServer, gateway_settings, start_server
from workload import phase_model, phase_parser


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = phase_parser(__doc__)  # --duration is each window's, the batching benchmark.py's
    parser.set_defaults(model="tiny", duration=4.0, warmup=1.0)
    parser.add_argument("--a", action="append", default=[], metavar="MAAS_NAME=VALUE")
    parser.add_argument("--b", action="append", default=[], metavar="MAAS_NAME=VALUE")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6, help="windows per server")
    args = parser.parse_args(argv)
    args.settings = {
        "A": gateway_settings(parser, args.a, "--a"),
        "B": gateway_settings(parser, args.b, "--b"),
    }
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    folder, bodies = phase_model(args)
    settings: dict[str, dict[str, str]] = args.settings
    print(f"{args.model}, concurrency {args.concurrency}, {args.rounds} x {args.duration:g} s windows each")
    for side, env in settings.items():
        print(f"  {side}: {' '.join(f'{k}={v}' for k, v in env.items()) or 'defaults'}")
    with tempfile.TemporaryDirectory(prefix="maas-ab-") as tmp:
        servers: dict[str, RunningServer] = {}
        try:
            for side, env in settings.items():
                servers[side] = start_server(
                    "maas",
                    folder,
                    Path(tmp) / side,
                    bodies[0],
                    max_batch_size=args.max_batch_size,
                    max_delay_ms=args.max_delay_ms,
                    maas_env=env,
                )
            samples: dict[str, list[tuple[float, float, float]]] = {"A": [], "B": []}
            for round_ in range(args.rounds):
                order = ("A", "B") if round_ % 2 == 0 else ("B", "A")  # neither always goes first
                for side in order:
                    server = servers[side]
                    requests = [build_request(server.predict_url, b, headers=server.headers) for b in bodies]
                    result = asyncio.run(
                        run_closed_loop(
                            server.predict_url,
                            requests,
                            concurrency=args.concurrency,
                            duration_s=args.duration,
                            warmup_s=args.warmup,
                        )
                    )
                    row = (result.throughput, result.percentile_ms(50), result.percentile_ms(99))
                    samples[side].append(row)
                    print(
                        f"  round {round_ + 1} {side}: {row[0]:7.1f} img/s  p50 {row[1]:6.1f} ms  "
                        f"p99 {row[2]:6.1f} ms  errors {result.errors}"
                    )
        finally:
            for server in servers.values():
                server.stop()
    medians = {
        side: [statistics.median(r[i] for r in rows) for i in range(3)] for side, rows in samples.items()
    }
    for side, (rate, p50, p99) in medians.items():
        print(f"{side} median: {rate:.1f} img/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    ratios = [b[0] / a[0] for a, b in zip(samples["A"], samples["B"], strict=True)]
    print(
        f"B/A throughput: {medians['B'][0] / medians['A'][0]:.2f} (median of the medians); "
        f"per round {', '.join(f'{r:.2f}' for r in ratios)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
