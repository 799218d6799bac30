"""`maas tenants …`, `maas keys …`: the admin API's work from the shell, straight on the database
(the same one the gateway uses: `--data-dir` / `--database-url` or `MAAS_*`).

Changes to keys and tenants made here reach running gateways within a second (their key cache's
lifetime) and, with `MAAS_REDIS_URL` set, at once: the change is published as the admin API does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from service.cli.db import open_database
from service.errors import GatewayError
from service.settings import Settings
from service.tenancy.keychanges import KeyChanges
from service.tenancy.keys import SCOPES
from service.tenancy.tenants import DEFAULT_SCOPES, Tenants, describe_key, describe_tenant

COMMANDS = ("tenants", "keys")


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add `tenants` and `keys` to the `maas` parser; `common` carries the database flags."""
    tenants = commands.add_parser("tenants", help="tenants").add_subparsers(dest="action", required=True)
    create = tenants.add_parser("create", parents=[common], help="create a tenant")
    create.add_argument("tenant_name", metavar="NAME")
    create.add_argument("--rps", type=float, help="requests a second shared by all its keys")
    create.add_argument("--concurrency", type=int, help="requests in flight at once")
    create.add_argument("--quota", type=int, help="inputs a calendar month")
    create.add_argument("--models", type=_names, help="the models it may use, a,b (default: all public)")
    create.add_argument("--weight", type=float, default=1.0, help="its share of a busy model (0.01-1000)")
    update = tenants.add_parser("update", parents=[common], help="change a tenant's weight")
    update.add_argument("tenant_name", metavar="NAME")
    update.add_argument("--weight", type=float, required=True, help="its share of a busy model (0.01-1000)")
    tenants.add_parser("list", parents=[common], help="list tenants")
    for action in ("suspend", "resume"):
        change = tenants.add_parser(action, parents=[common], help=f"{action} a tenant's keys")
        change.add_argument("tenant_name", metavar="NAME")

    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    make = keys.add_parser("create", parents=[common], help="create a key (and its tenant if needed)")
    make.add_argument("--tenant", required=True, dest="tenant_name")
    make.add_argument("--admin", action="store_true", help="an admin key: manages every tenant")
    make.add_argument(
        "--scopes", type=_names, help=f"of {','.join(sorted(SCOPES))} (default inference,fine_tune)"
    )
    make.add_argument("--models", type=_names, help="the models this key may use, a,b")
    make.add_argument("--name", dest="key_name", help="a label for people")
    make.add_argument("--rps", type=float, help="this key's own rate limit")
    make.add_argument("--expires-in-days", type=float, help="the key stops working after this")
    listing = keys.add_parser("list", parents=[common], help="list a tenant's keys (never their secrets)")
    listing.add_argument("--tenant", required=True, dest="tenant_name")
    revoke = keys.add_parser("revoke", parents=[common], help="revoke a key, given the key or its id")
    revoke.add_argument("key_or_id", metavar="KEY_OR_ID")


def table(rows: Sequence[Sequence[object]]) -> None:
    cells = [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def run(args: argparse.Namespace, settings: Settings) -> None:
    """Run one `tenants` or `keys` command; errors exit with status 1 and a message."""
    try:
        with open_database(settings) as sessions:
            changed = _run(args, Tenants(sessions))
    except GatewayError as exc:
        sys.exit(f"maas: {exc.message}")
    if changed and settings.redis_url is not None:
        changes = KeyChanges(settings.redis_url.get_secret_value())
        changes.publish(changed)  # running gateways drop their key caches now, not within 1 s
        changes.close_publisher()


def _run(args: argparse.Namespace, tenants: Tenants) -> str | None:
    """Run the command; what changed for running gateways' key caches, if anything."""
    command = (args.command, args.action)
    if command == ("tenants", "create"):
        made = tenants.create_tenant(
            args.tenant_name,
            rate_limit_rps=args.rps,
            max_concurrency=args.concurrency,
            monthly_quota_inputs=args.quota,
            allowed_models=args.models,
            weight=args.weight,
        )
        print(f"created tenant {made.name} ({made.id})")
    elif command == ("tenants", "update"):
        changed = tenants.update_tenant(args.tenant_name, {"weight": args.weight})
        print(f"tenant {changed.name} has weight {changed.weight:g}")
        return "tenant updated"
    elif command == ("tenants", "list"):
        rows = [describe_tenant(t) for t in tenants.list_tenants()]
        header = [
            "name",
            "status",
            "weight",
            "rate_limit_rps",
            "max_concurrency",
            "monthly_quota_inputs",
            "allowed_models",
        ]
        table([header, *[[r[h] if h != "allowed_models" else _join(r[h]) for h in header] for r in rows]])
    elif command in (("tenants", "suspend"), ("tenants", "resume")):
        status = "suspended" if args.action == "suspend" else "active"
        print(f"tenant {tenants.set_status(args.tenant_name, status).name} is {status}")
        return f"tenant {status}"
    elif command == ("keys", "create"):
        _create_key(args, tenants)
    elif command == ("keys", "list"):
        header = ["id", "prefix", "name", "scopes", "models", "expires_at", "revoked_at", "last_used_at"]
        keys = [describe_key(k, args.tenant_name) for k in tenants.list_keys(args.tenant_name)]
        table([header, *[[_join(k[h]) if h in ("scopes", "models") else k[h] for h in header] for k in keys]])
    elif command == ("keys", "revoke"):
        key, tenant = tenants.revoke_key(args.key_or_id)
        print(f"revoked key {key.id} ({key.prefix}…) of tenant {tenant}")
        return "key revoked"
    return None


def _join(names: list[str] | None) -> str | None:
    return ",".join(names) if names is not None else None


def _create_key(args: argparse.Namespace, tenants: Tenants) -> None:
    scopes = sorted(SCOPES) if args.admin else (args.scopes or list(DEFAULT_SCOPES))
    expires = datetime.now(UTC) + timedelta(days=args.expires_in_days) if args.expires_in_days else None
    tenants.ensure_tenant(args.tenant_name)
    made = tenants.create_key(
        args.tenant_name,
        name=args.key_name,
        scopes=scopes,
        models=args.models,
        rate_limit_rps=args.rps,
        expires_at=expires,
    )
    print(
        f"created key {made.row.id} for tenant {made.tenant} (scopes {','.join(made.row.scopes)}); "
        "it is shown this once, on the next line:"
    )
    print(made.key)  # alone on the last line, for `KEY=$(maas keys create … | tail -1)`
