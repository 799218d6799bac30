"""Fair sharing under a flood: one tenant floods a model while another sends a steady light load.

    python loadtests/fairness.py --model deit-tiny --duration 10

For MAAS_FAIR_QUEUEING on and then off, it starts a real `maas serve` (servers.py), makes two
tenants with a key each, measures the light tenant alone (`--light-concurrency` closed-loop
clients), then the same light load while the flooding tenant runs `--flood-concurrency` (24)
closed-loop clients, and prints the light tenant's p50/p99 alone and under flood, and the ratio
of the p99s (the target: at most 3x with fair queueing on). docs/serving.md records a run.

The light tenant's clients run in a process of their own, as another tenant's would on its own
machine: in the flood's event loop they would wait for the flood's answers to be read before
their own (on two cores that alone doubled the light tenant's p99). `--same-loop` runs them in
the flood's loop, as this script did before.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: siblings import flat

from loadgen import LoadResult, build_request, run_closed_loop
from servers import RunningServer, start_server, tenant_key
from workload import phase_model, phase_parser


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = phase_parser(__doc__)
    parser.add_argument("--flood-concurrency", type=int, default=24)
    parser.add_argument("--light-concurrency", type=int, default=1)
    parser.add_argument("--same-loop", action="store_true", help="light clients in the flood's event loop")
    return parser.parse_args(argv)


def _closed_loop(
    url: str, requests: list[bytes], concurrency: int, duration_s: float, warmup_s: float
) -> LoadResult:
    """A closed loop in its own event loop (in a process of its own)."""
    return asyncio.run(
        run_closed_loop(url, requests, concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s)
    )


async def _phases(
    server: RunningServer, bodies: list[bytes], args: argparse.Namespace
) -> dict[str, LoadResult]:
    url = server.predict_url
    light_key, flood_key = await tenant_key(server, "light"), await tenant_key(server, "flood")
    light = [build_request(url, b, headers=light_key) for b in bodies]
    flood = [build_request(url, b, headers=flood_key) for b in bodies]

    def load(requests: list[bytes], concurrency: int) -> asyncio.Future[LoadResult]:
        return asyncio.ensure_future(
            run_closed_loop(
                url, requests, concurrency=concurrency, duration_s=args.duration, warmup_s=args.warmup
            )
        )

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as own_process:

        def light_load() -> asyncio.Future[LoadResult]:
            if args.same_loop:
                return load(light, args.light_concurrency)
            return asyncio.get_running_loop().run_in_executor(
                own_process, _closed_loop, url, light, args.light_concurrency, args.duration, args.warmup
            )

        alone = await light_load()
        under, flooding = await asyncio.gather(light_load(), load(flood, args.flood_concurrency))
    return {"alone": alone, "flood": under, "flooder": flooding}


def _line(fair: bool, results: dict[str, LoadResult]) -> str:
    alone, flood, flooder = results["alone"], results["flood"], results["flooder"]
    ratio = flood.percentile_ms(99) / alone.percentile_ms(99)
    return (
        f"| {'on' if fair else 'off'} | {alone.percentile_ms(50):.1f} | {alone.percentile_ms(99):.1f} "
        f"| {flood.percentile_ms(50):.1f} | {flood.percentile_ms(99):.1f} | {ratio:.1f}x "
        f"| {flooder.throughput:.0f} | {flood.errors + alone.errors} / {flooder.errors} |"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    folder, bodies = phase_model(args)
    lines = []
    with tempfile.TemporaryDirectory(prefix="maas-fairness-") as tmp:
        for fair in (True, False):
            server = start_server(
                "maas",
                folder,
                Path(tmp) / ("fair" if fair else "fifo"),
                bodies[0],
                max_batch_size=args.max_batch_size,
                max_delay_ms=args.max_delay_ms,
                maas_env={"MAAS_FAIR_QUEUEING": str(fair).lower(), "MAAS_METERING": "false"},
            )
            try:
                results = asyncio.run(_phases(server, bodies, args))
            finally:
                server.stop()
            for name, result in results.items():
                for sample in result.error_samples:
                    print(f"  ! fair={fair} {name}: {sample}")
            lines.append(_line(fair, results))
            print(lines[-1], flush=True)
    where = "in the flood's event loop" if args.same_loop else "in a process of their own"
    print(
        f"\nmodel {args.model}, batch {args.max_batch_size}/{args.max_delay_ms} ms, light "
        f"{args.light_concurrency} client(s) ({where}), "
        f"flood {args.flood_concurrency} clients, "
        f"{args.duration:g} s phases\n"
    )
    print(
        "| fair queueing | alone p50 ms | alone p99 ms | flood p50 ms | flood p99 ms | p99 ratio "
        "| flood req/s | errors light / flood |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
