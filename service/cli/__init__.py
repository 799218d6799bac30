"""The `maas` command: `maas serve` starts the gateway (cli/serve.py); `maas db …` migrates the
database (cli/db.py); `maas tenants|keys …` manage tenants and keys (cli/tenants.py); `maas
models …` models registered at run time (cli/models.py). Flags override `MAAS_*` variables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.cli import db, models, tenants
from service.cli.serve import serve
from service.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maas", description="maas-gateway: models as a service")
    commands = parser.add_subparsers(dest="command", required=True)
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument("--data-dir", type=Path, help="state folder (MAAS_DATA_DIR, default ./var)")
    database.add_argument("--database-url", help="SQLAlchemy URL (MAAS_DATABASE_URL)")
    serve = commands.add_parser("serve", parents=[database], help="start the gateway")
    serve.add_argument("--host", help="address to bind (MAAS_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (MAAS_PORT, default 8000)")
    serve.add_argument("--models-dir", type=Path, help="manifests folder (MAAS_MODELS_DIR)")
    serve.add_argument("--devices", help="auto, cpu, or cuda:0,cuda:1,… (MAAS_DEVICES)")
    serve.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="MAAS_LOG_LEVEL, default info",
    )
    serve.add_argument("--log-format", choices=["json", "text"], help="MAAS_LOG_FORMAT, default text")
    serve.add_argument(
        "--print-admin-key",
        action="store_true",
        default=None,
        help="print the admin key kept in <data dir>/admin.key (MAAS_PRINT_ADMIN_KEY)",
    )
    db.add_commands(commands, database)
    tenants.add_commands(commands, database)
    models.add_commands(commands, database)
    return parser


def build_settings(args: argparse.Namespace) -> Settings:
    """Flags first, then MAAS_* variables, then defaults."""
    overrides: dict[str, Any] = {
        key: value for key, value in vars(args).items() if key in Settings.model_fields and value is not None
    }
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = build_settings(args)
    except ValidationError as exc:
        sys.exit(f"maas: invalid setting: {exc}")
    if args.command == "serve":
        serve(settings)
    elif args.command in db.COMMANDS:
        db.run(args, settings)
    elif args.command in tenants.COMMANDS:
        tenants.run(args, settings)
    elif args.command in models.COMMANDS:
        models.run(args, settings)


if __name__ == "__main__":
    main()
