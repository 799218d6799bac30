"""Persistence: the engine now; tables and Alembic migrations arrive with tenants and metering."""

from service.db.engine import check_connection, create_db_engine

__all__ = ["check_connection", "create_db_engine"]
