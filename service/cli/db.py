"""`maas db upgrade`: apply the schema migrations (each start does it too), and the database the
other commands open, migrated first (`--data-dir` / `--database-url` or `MAAS_*`)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, sessionmaker

from service.db import check_connection, create_db_engine, session_factory, upgrade
from service.settings import Settings

COMMANDS = ("db",)


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add `db` to the `maas` parser; `common` carries the database flags."""
    db = commands.add_parser("db", help="the database").add_subparsers(dest="action", required=True)
    db.add_parser("upgrade", parents=[common], help="apply the schema migrations (start-up does it too)")


@contextmanager
def open_database(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """The gateway's database, connected and migrated; disposed of on exit."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(settings.resolved_database_url)
    try:
        check_connection(engine)
        upgrade(engine)
        yield session_factory(engine)
    finally:
        engine.dispose()


def run(args: argparse.Namespace, settings: Settings) -> None:
    """`maas db upgrade`."""
    with open_database(settings):
        print("maas: the database schema is up to date")
