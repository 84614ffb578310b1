"""One-shot steps the launcher runs in a subprocess: ``migrate`` (wait for the database with
tenacity, ``alembic upgrade head``, then create or update the services' database role and its
grants, ``fedcore.db_roles``) and ``admin-token`` (store the hash of the launcher's admin token).
Inputs come from the environment so nothing secret is on a command line:
``MOSAIC_DATABASE_URL`` (the owner's), ``MOSAIC_APP_DB_PASSWORD`` (and optionally
``MOSAIC_APP_DB_ROLE``, default ``mosaic_app``)."""

from __future__ import annotations

import os
import sys

import psycopg
from sqlalchemy import create_engine, text
from tenacity import retry, stop_after_delay, wait_fixed

from fedcore import migrations
from fedcore.db_roles import DEFAULT_APP_ROLE, ensure_app_role
from fedcore.tokens import hash_token


@retry(stop=stop_after_delay(30), wait=wait_fixed(0.5), reraise=True)
def _wait_for_database(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def migrate(url: str, app_role: str, app_password: str) -> None:
    _wait_for_database(url)
    migrations.upgrade(url)
    # After every upgrade: new tables get the role's grants too.
    with psycopg.connect(
        url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as owner:
        ensure_app_role(owner, app_role, app_password)


def store_admin_token(url: str, token: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO admin_tokens (id, token_hash, label, role, revoked) "
                    "VALUES (gen_random_uuid(), :hash, 'devstack', 'admin', false) "
                    "ON CONFLICT (token_hash) DO NOTHING"
                ),
                {"hash": hash_token(token)},
            )
    finally:
        engine.dispose()


def main() -> None:
    url = os.environ["MOSAIC_DATABASE_URL"]
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "migrate":
        migrate(
            url,
            os.environ.get("MOSAIC_APP_DB_ROLE", DEFAULT_APP_ROLE),
            os.environ["MOSAIC_APP_DB_PASSWORD"],
        )
    elif command == "admin-token":
        store_admin_token(url, os.environ["MOSAIC_ADMIN_TOKEN"])
    else:
        print("usage: python -m devstack.bootstrap migrate|admin-token", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
