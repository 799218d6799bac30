"""What a tenant's plan costs it: one `maas serve`, tenants that differ only in their plan (none,
a monthly quota, a concurrency cap, a rate limit), each driven in turn by the same closed loop in
short windows, so that a drift of the machine's speed falls on all alike. Every limit is set far
above what the run can reach, so that nothing is refused: what is measured is the checking.

    python loadtests/plans.py
    python loadtests/plans.py --model deit-tiny --rounds 4 --concurrency 8

Prints each window, then each plan's median throughput and its ratio to the tenant without a plan.
docs/tenants.md records a run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: siblings import flat

from loadgen import build_request, run_closed_loop
from servers import start_server, tenant_key
from workload import phase_model, phase_parser

PLANS: dict[str, dict[str, Any]] = {
    "none": {},
    "quota": {"monthly_quota_inputs": 10**12},
    "concurrency": {"max_concurrency": 10_000},
    "rate": {"rate_limit_rps": 1e6},
}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = phase_parser(__doc__)  # --duration is each window's, the batching benchmark.py's
    parser.set_defaults(model="tiny", duration=4.0, warmup=1.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="windows per plan")
    return parser.parse_args(argv)


async def _windows(
    url: str, keys: dict[str, list[bytes]], args: argparse.Namespace
) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {plan: [] for plan in keys}
    for round_ in range(args.rounds):
        order = list(keys) if round_ % 2 == 0 else list(reversed(keys))  # no plan always first
        for plan in order:
            result = await run_closed_loop(
                url, keys[plan], concurrency=args.concurrency, duration_s=args.duration, warmup_s=args.warmup
            )
            if result.errors:
                raise RuntimeError(f"{plan}: {result.errors} errors, e.g. {result.error_samples[:1]}")
            rates[plan].append(result.throughput)
            print(
                f"  round {round_ + 1} {plan:<11} {result.throughput:7.1f} img/s  "
                f"p99 {result.percentile_ms(99):6.1f} ms"
            )
    return rates


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    folder, bodies = phase_model(args)
    print(
        f"{args.model}, concurrency {args.concurrency}, {args.rounds} x {args.duration:g} s windows per plan"
    )
    with tempfile.TemporaryDirectory(prefix="maas-plans-") as tmp:
        server = start_server(
            "maas",
            folder,
            Path(tmp) / "maas",
            bodies[0],
            max_batch_size=args.max_batch_size,
            max_delay_ms=args.max_delay_ms,
        )
        try:

            async def run() -> dict[str, list[float]]:
                keys = {}
                for plan, fields in PLANS.items():
                    headers = await tenant_key(server, f"plan-{plan}", **fields)
                    keys[plan] = [build_request(server.predict_url, b, headers=headers) for b in bodies]
                return await _windows(server.predict_url, keys, args)

            rates = asyncio.run(run())
        finally:
            server.stop()
    base = statistics.median(rates["none"])
    print("\n| plan | img/s (median) | against no plan | per window |\n|---|---:|---:|---|")
    for plan, values in rates.items():
        median = statistics.median(values)
        print(f"| {plan} | {median:.1f} | {median / base:.2f}x | {', '.join(f'{v:.0f}' for v in values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
