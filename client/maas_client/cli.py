"""The `maas-client` command: classify files, embed texts, list models, follow a fine-tune job.

maas-client predict efficientnet-lite0 cat.jpg dog.png --top-k 3
maas-client predict efficientnet-lite0 cat.jpg --json
maas-client embed all-minilm-l6-v2 "a cat on a mat"
maas-client models
maas-client fine-tunes follow ftjob_123
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TextIO

from maas_client._version import __version__
from maas_client.client import Client
from maas_client.errors import MaasError
from maas_client.types import FineTuneEvent, FineTuneJob, Prediction


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maas-client", description="Call a maas-gateway from the shell (MAAS_BASE_URL, MAAS_API_KEY)."
    )
    parser.add_argument("--version", action="version", version=f"maas-client {__version__}")
    parser.add_argument("--base-url", help="gateway URL (default: MAAS_BASE_URL, else http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key (default: MAAS_API_KEY)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument("--max-retries", type=int, default=2, help="retries on 429/503/connection errors")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="classify image files")
    predict.add_argument("model")
    predict.add_argument("files", nargs="+", metavar="FILE")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--json", action="store_true", help="print the gateway's JSON answer")

    embed = commands.add_parser("embed", help="embed texts with a text model")
    embed.add_argument("model")
    embed.add_argument("texts", nargs="+", metavar="TEXT")

    models = commands.add_parser("models", help="list the models this key may use")
    models.add_argument("--json", action="store_true")

    fine_tunes = commands.add_parser("fine-tunes", help="fine-tuning jobs")
    fine_tune_commands = fine_tunes.add_subparsers(dest="fine_tune_command", required=True)
    follow = fine_tune_commands.add_parser("follow", help="print a job's events until it finishes")
    follow.add_argument("job_id")
    follow.add_argument("--interval", type=float, default=5.0, help="seconds between polls (default 5)")
    return parser


def _print_predictions(files: Sequence[str], result: Prediction, out: TextIO) -> None:
    for name, ranked in zip(files, result.predictions, strict=False):
        print(name, file=out)
        for guess in ranked:
            print(f"  {guess.score:7.4f}  {guess.label}", file=out)
    if result.embeddings is not None:
        for name, vector in zip(files, result.embeddings, strict=False):
            print(f"{name}: {len(vector)}-d embedding", file=out)


def _follow(client: Client, job_id: str, interval: float, out: TextIO) -> FineTuneJob:
    last_status: list[str] = []

    def progress(job: FineTuneJob, events: list[FineTuneEvent]) -> None:
        for event in events:
            stamp = f"{event.created_at} " if event.created_at else ""
            print(f"{stamp}{event.message}", file=out, flush=True)
        if not last_status or last_status[-1] != job.status:
            print(f"[{job.id}] {job.status}", file=out, flush=True)
            last_status.append(job.status)

    return client.fine_tunes.wait(job_id, poll_interval=interval, progress=progress)


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 the gateway refused, 2 bad usage)."""
    args = _parser().parse_args(argv)
    out = out or sys.stdout
    try:
        client = Client(args.base_url, args.api_key, timeout=args.timeout, max_retries=args.max_retries)
        with client:
            if args.command == "predict":
                result = client.predict(args.model, args.files, top_k=args.top_k)
                if args.json:
                    print(json.dumps(result.raw, indent=2), file=out)
                else:
                    _print_predictions(args.files, result, out)
            elif args.command == "embed":
                print(json.dumps(client.embed(args.model, args.texts).raw), file=out)
            elif args.command == "models":
                models = client.models.list()
                if args.json:
                    print(json.dumps([m.raw for m in models], indent=2), file=out)
                for m in [] if args.json else models:
                    reason = f"  ({m.reason})" if m.reason else ""
                    print(f"{m.id:<28} {m.task or '-':<24} {m.status}{reason}", file=out)
            else:
                job = _follow(client, args.job_id, args.interval, out)
                summary: dict[str, Any] = asdict(job)
                summary.pop("raw", None)
                print(json.dumps(summary), file=out)
                return 0 if job.status == "succeeded" else 1
    except MaasError as exc:
        print(f"maas-client: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError) as exc:
        print(f"maas-client: {exc}", file=sys.stderr)
        return 2
    return 0
