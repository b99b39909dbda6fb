"""Alembic environment: runs on the engine the platform hands it."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from oneplatform.store.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from oneplatform.config import get_settings

        url = get_settings().store_url
    engine = create_engine(url)


def _sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    """SQLite checks foreign keys only outside a transaction's changes of this setting, so it
    is set on the driver's connection before any BEGIN. Off while migrating: a batch
    migration copies a table and drops the old one, which with the checks on fails (or
    cascades) for a table other rows refer to (pools, flavors, tokens)."""
    raw = connection.connection.driver_connection
    assert raw is not None
    raw.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=sqlite,
        compare_type=True,
    )
    if sqlite:
        _sqlite_foreign_keys(connection, on=False)
    try:
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Processes that start at once on one store migrate one after the other: the
                # lock lasts until this transaction (every migration in it) commits.
                connection.exec_driver_sql(
                    "SELECT pg_advisory_xact_lock(1869505905)"
                )  # not STARTUP_LOCK_KEY
            context.run_migrations()
        if sqlite:  # (each migration committed on its own) the copies left hold together
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            connection.commit()  # the read's transaction: the setting changes only outside one
            if broken:
                raise RuntimeError(f"a migration broke foreign keys: {broken[:5]}")
    finally:
        if sqlite:
            if connection.in_transaction():
                connection.rollback()
            _sqlite_foreign_keys(connection, on=True)
