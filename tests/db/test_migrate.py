"""Migrations: they build the schema on an empty database, and running them again changes nothing."""

from __future__ import annotations

from sqlalchemy import inspect

from service.db import create_db_engine, upgrade


def test_upgrade_creates_the_tables_and_is_idempotent(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        upgrade(engine)
        upgrade(engine)  # a second start, or `maas db upgrade` after one
        tables = set(inspect(engine).get_table_names())
        assert {"tenants", "api_keys", "quota_usage", "alembic_version"} <= tables
        assert {"files", "fine_tune_jobs", "fine_tune_events"} <= tables
        key_columns = {c["name"] for c in inspect(engine).get_columns("api_keys")}
        assert "key_hash" in key_columns and "key" not in key_columns
    finally:
        engine.dispose()
