"""Alembic's environment: runs on the connection that `service.db.migrate.upgrade` hands in."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from service.db.models import Base

connection: Connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
