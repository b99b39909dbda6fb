"""Alembic environment: runs on the engine the platform hands it."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from oneplatform.store.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from oneplatform.config import get_settings

        url = get_settings().store_url
    engine = create_engine(url)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Processes that start at once on one store migrate one after the other: the
            # lock lasts until this transaction (every migration in it) commits.
            connection.exec_driver_sql(
                "SELECT pg_advisory_xact_lock(1869505905)"
            )  # not STARTUP_LOCK_KEY
        context.run_migrations()
