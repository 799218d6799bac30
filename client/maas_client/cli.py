"""The `maas-client` command: the gateway's API from the shell, readable tables by default and the
gateway's JSON with `--json`.

maas-client predict efficientnet-lite0 cat.jpg dog.png --top-k 3
maas-client embed all-minilm-l6-v2 "a cat on a mat"
maas-client models
maas-client usage --group-by model,day
maas-client files upload colours.zip
maas-client fine-tunes create efficientnet-lite0 file_123 --epochs 3 --follow
maas-client files upload photos.zip --purpose batch
maas-client batches create efficientnet-lite0 file_456 --wait
maas-client batches results batch_789 -o results.jsonl
maas-client admin tenants create acme --rps 10 --quota 100000
maas-client admin keys create acme --name ci
maas-client admin billing-export 2026-11 --format csv -o 2026-11.csv

Exit status: 0 ok, 1 the gateway refused (its error and request id on stderr), 2 bad usage or an
unreadable (or unwritable) file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from maas_client import _cli_batches as batch_run
from maas_client import _cli_commands as run
from maas_client._version import __version__
from maas_client.client import Client
from maas_client.errors import MaasError

Commands = Any  # argparse's _SubParsersAction, which it does not export


def _command(commands: Commands, name: str, handler: run.Handler, help: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help, description=help)
    parser.set_defaults(handler=handler)
    return parser


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON instead of a table")


def _window(parser: argparse.ArgumentParser, groups: str) -> None:
    parser.add_argument("--start", help="from this time, ISO 8601 (default: start of this month, UTC)")
    parser.add_argument("--end", help="until this time, excluded (default: now)")
    parser.add_argument("--group-by", metavar="GROUPS", help=f"comma-separated: {groups}")
    _json_flag(parser)


def _add_inference(commands: Commands) -> None:
    predict = _command(commands, "predict", run.predict, "classify image files")
    predict.add_argument("model")
    predict.add_argument("files", nargs="+", metavar="FILE")
    predict.add_argument("--top-k", type=int, default=5)
    _json_flag(predict)

    embed = _command(commands, "embed", run.embed, "embed texts with a text model (prints JSON)")
    embed.add_argument("model")
    embed.add_argument("texts", nargs="+", metavar="TEXT")

    _json_flag(_command(commands, "models", run.models, "list the models this key may use"))
    usage = _command(commands, "usage", run.usage, "this key's tenant's usage and cost")
    _window(usage, "model, day, key")


def _add_files(commands: Commands) -> None:
    files = commands.add_parser(
        "files",
        help="fine-tuning datasets and batch inputs",
        description="fine-tuning datasets and batch inputs",
    )
    actions = files.add_subparsers(dest="files_command", required=True, metavar="COMMAND")
    what = "upload a dataset: a zip (<label>/<image>), or JSONL / CSV of text,label"
    upload = _command(actions, "upload", run.files_upload, what)
    upload.add_argument("path", metavar="PATH")
    upload.add_argument("--purpose", default="fine-tune")
    _json_flag(upload)
    _json_flag(_command(actions, "list", run.files_list, "this tenant's uploaded files"))
    _command(actions, "delete", run.files_delete, "delete an uploaded file").add_argument(
        "file_id", metavar="ID"
    )


def _add_fine_tunes(commands: Commands) -> None:
    fine_tunes = commands.add_parser("fine-tunes", help="fine-tuning jobs", description="fine-tuning jobs")
    actions = fine_tunes.add_subparsers(dest="fine_tune_command", required=True, metavar="COMMAND")
    create = _command(actions, "create", run.fine_tunes_create, "queue a job fine-tuning BASE on FILE_ID")
    create.add_argument("base_model", metavar="BASE")
    create.add_argument("training_file", metavar="FILE_ID")
    create.add_argument("--validation-file", metavar="FILE_ID")
    create.add_argument("--epochs", type=int)
    create.add_argument("--learning-rate", type=float)
    create.add_argument("--batch-size", type=int)
    create.add_argument("--seed", type=int)
    create.add_argument("--method", choices=["full", "lora"])
    create.add_argument("--lora-rank", type=int, help="method lora: the adapters' rank")
    create.add_argument("--lora-alpha", type=int, help="method lora: adapter scale is alpha / rank")
    create.add_argument("--priority", choices=["high", "normal", "low"])
    create.add_argument("--suffix", help="put in the fine-tuned model's name (1-20 of a-z, 0-9, -)")
    create.add_argument("--follow", action="store_true", help="then print its events until it ends")
    create.add_argument("--interval", type=float, default=5.0, help="--follow: seconds between polls")
    _json_flag(create)

    _json_flag(_command(actions, "list", run.fine_tunes_list, "this tenant's jobs"))
    for name, handler, help in (
        ("get", run.fine_tunes_get, "one job: status, progress, metrics, fine-tuned model"),
        ("events", run.fine_tunes_events, "a job's events, oldest first"),
        ("cancel", run.fine_tunes_cancel, "cancel a queued or running job"),
    ):
        action = _command(actions, name, handler, help)
        action.add_argument("job_id", metavar="ID")
        _json_flag(action)
    follow = _command(actions, "follow", run.fine_tunes_follow, "print a job's events until it finishes")
    follow.add_argument("job_id", metavar="ID")
    follow.add_argument("--interval", type=float, default=5.0, help="seconds between polls (default 5)")


def _add_batches(commands: Commands) -> None:
    batches = commands.add_parser(
        "batches", help="asynchronous batch jobs", description="asynchronous batch jobs"
    )
    actions = batches.add_subparsers(dest="batch_command", required=True, metavar="COMMAND")
    create = _command(
        actions, "create", batch_run.create, "queue the inputs of FILE_ID (purpose batch) for MODEL"
    )
    create.add_argument("model", metavar="MODEL")
    create.add_argument("input_file", metavar="FILE_ID")
    create.add_argument(
        "--wait", action="store_true", help="then wait until it ends (exit 1 unless completed)"
    )
    create.add_argument("--interval", type=float, default=2.0, help="--wait: seconds between polls")
    _json_flag(create)
    _json_flag(_command(actions, "list", batch_run.list_jobs, "this tenant's batch jobs"))
    for name, handler, help in (
        ("get", batch_run.get, "one batch job: status and counts"),
        ("cancel", batch_run.cancel, "cancel a queued or running batch job"),
    ):
        action = _command(actions, name, handler, help)
        action.add_argument("batch_id", metavar="ID")
        _json_flag(action)
    results = _command(
        actions, "results", batch_run.results, "a batch job's results, JSON lines in input order"
    )
    results.add_argument("batch_id", metavar="ID")
    results.add_argument("-o", "--output", metavar="FILE", help="write them to FILE")


def _add_admin(commands: Commands) -> None:
    admin = commands.add_parser("admin", help="tenants, keys, usage, billing (admin keys)")
    areas = admin.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")

    usage = _command(areas, "usage", run.admin_usage, "any tenant's usage and cost")
    usage.add_argument("--tenant", help="a tenant's name (default: every tenant)")
    _window(usage, "tenant, model, day, key")
    export = _command(areas, "billing-export", run.billing_export, "a month's invoice lines")
    export.add_argument("period", metavar="PERIOD", help="the month, YYYY-MM (UTC)")
    export.add_argument(
        "--format", choices=["csv", "json"], help="the gateway's CSV or JSON (default: a table)"
    )
    export.add_argument("--json", dest="format", action="store_const", const="json", help="--format json")
    export.add_argument("-o", "--output", metavar="FILE", help="write it to FILE (default format there: csv)")

    tenants = areas.add_parser("tenants", help="create and list tenants")
    tenant_actions = tenants.add_subparsers(dest="tenants_command", required=True, metavar="COMMAND")
    create = _command(tenant_actions, "create", run.tenants_create, "create a tenant")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--rps", type=float, help="requests per second (default: unlimited)")
    create.add_argument("--max-concurrency", type=int, help="requests in flight at once")
    create.add_argument("--quota", type=int, help="inputs per month")
    create.add_argument("--models", help="comma-separated allow-list (default: every public model)")
    _json_flag(create)
    _json_flag(_command(tenant_actions, "list", run.tenants_list, "every tenant"))

    keys = areas.add_parser("keys", help="create, list and revoke keys")
    key_actions = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = _command(key_actions, "create", run.keys_create, "create a key; prints its secret once")
    create.add_argument("tenant", metavar="TENANT")
    create.add_argument("--name")
    create.add_argument(
        "--scopes", help="comma-separated (default: inference,fine_tune; admin: an admin key)"
    )
    create.add_argument("--models", help="comma-separated: narrows the tenant's models")
    create.add_argument("--expires-at", metavar="TIME", help="ISO 8601, in the future")
    create.add_argument("--rps", type=float, help="this key's requests per second")
    _json_flag(create)
    listing = _command(key_actions, "list", run.keys_list, "a tenant's keys (never their secrets)")
    listing.add_argument("tenant", metavar="TENANT")
    _json_flag(listing)
    revoke = _command(key_actions, "revoke", run.keys_revoke, "revoke a key by id; stops it at once")
    revoke.add_argument("key_id", metavar="KEY_ID")
    _json_flag(revoke)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maas-client", description="Call a maas-gateway from the shell (MAAS_BASE_URL, MAAS_API_KEY)."
    )
    parser.add_argument("--version", action="version", version=f"maas-client {__version__}")
    parser.add_argument("--base-url", help="gateway URL (default: MAAS_BASE_URL, else http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key (default: MAAS_API_KEY)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument("--max-retries", type=int, default=2, help="retries on 429/503/connection errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_inference(commands)
    _add_files(commands)
    _add_fine_tunes(commands)
    _add_batches(commands)
    _add_admin(commands)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 the gateway refused, 2 bad usage or
    an unreadable file)."""
    args = _parser().parse_args(argv)
    out = out or sys.stdout
    handler: run.Handler = args.handler
    try:
        with Client(
            args.base_url, args.api_key, timeout=args.timeout, max_retries=args.max_retries
        ) as client:
            return handler(client, args, out)
    except MaasError as exc:
        print(f"maas-client: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError) as exc:
        print(f"maas-client: {exc}", file=sys.stderr)
        return 2
