"""Persistence: the engine, the tables (models.py), and Alembic migrations run in code."""

from service.db.engine import check_connection, create_db_engine, session_factory
from service.db.migrate import upgrade

__all__ = ["check_connection", "create_db_engine", "session_factory", "upgrade"]
