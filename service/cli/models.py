"""`maas models list|register FILE|delete NAME|load NAME|unload NAME`: models registered at run
time, straight on the database (`--data-dir` / `--database-url` or `MAAS_*`), as the admin API
registers them. Running gateways apply a change within `MAAS_MODEL_SYNC_S` and, with
`MAAS_REDIS_URL` set, at once: the change is announced as the admin API does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.cli.db import open_database
from service.cli.tenants import table
from service.errors import Conflict, GatewayError
from service.serving.manifests import discover_manifests, read_manifest
from service.serving.registrations import Registrations
from service.settings import Settings
from service.tenancy.keychanges import MODELS_CHANNEL, KeyChanges

COMMANDS = ("models",)


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add `models` to the `maas` parser; `common` carries the database flags."""
    models = commands.add_parser("models", help="models registered at run time").add_subparsers(
        dest="action", required=True
    )
    models.add_parser("list", parents=[common], help="list registered models")
    register = models.add_parser("register", parents=[common], help="register a manifest file (YAML or JSON)")
    register.add_argument("file", type=Path, metavar="FILE")
    register.add_argument("--models-dir", type=Path, help="the manifests folder whose names are taken")
    for action, what in (("delete", "drain and remove"), ("load", "load (again)"), ("unload", "unload")):
        change = models.add_parser(action, parents=[common], help=f"{what} a registered model")
        change.add_argument("model_name", metavar="NAME")


def run(args: argparse.Namespace, settings: Settings) -> None:
    """Run one `models` command; errors exit with status 1 and a message."""
    try:
        with open_database(settings) as sessions:
            changed = _run(args, Registrations(sessions), settings)
    except ValueError as exc:  # a manifest file that does not validate: names the field
        sys.exit(f"maas: {exc}")
    except GatewayError as exc:
        sys.exit(f"maas: {exc.message}")
    if changed and settings.redis_url is not None:
        changes = KeyChanges(
            settings.redis_url.get_secret_value(), channel=MODELS_CHANNEL, topic="model change"
        )
        changes.publish(changed)  # running gateways sync now, not at their next periodic sync
        changes.close_publisher()


def _run(args: argparse.Namespace, registrations: Registrations, settings: Settings) -> str | None:
    """Run the command; what changed for running gateways, if anything."""
    if args.action == "list":
        rows = [["name", "task", "source", "wanted", "updated_at"]]
        for found in sorted(registrations.active(), key=lambda r: r.name):
            wanted = "loaded" if found.loaded else "unloaded"
            m = found.manifest
            rows.append([m.name, m.task, m.source, wanted, found.updated_at.isoformat(timespec="seconds")])
        table(rows)
        return None
    if args.action == "register":
        manifest = read_manifest(args.file)  # the same validation as the models folder's
        if manifest.name in {f.name for f in discover_manifests(settings.models_dir)}:
            raise Conflict(f"model {manifest.name!r} exists in {settings.models_dir}; pick another name")
        registrations.create(manifest)
        print(f"registered model {manifest.name}")
    elif args.action == "delete":
        registrations.delete(args.model_name)
        print(f"deleted model {args.model_name}")
    else:
        registrations.set_loaded(args.model_name, args.action == "load")
        print(f"model {args.model_name} is {args.action}ed")
    return f"model {args.action}"
