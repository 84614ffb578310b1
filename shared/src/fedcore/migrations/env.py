"""Alembic environment: synchronous psycopg 3 connection, models' metadata as the target."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from fedcore.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url must be set by fedcore.migrations.alembic_config"
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            compare_server_default=False,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():  # pragma: no cover - we only run online migrations
    raise SystemExit("offline migrations are not supported; run against a database")
run_migrations_online()
