"""One-shot steps the launcher runs in a subprocess: ``migrate`` (wait for the database with
tenacity, then ``alembic upgrade head``) and ``admin-token`` (store the hash of the launcher's
admin token). Inputs come from the environment so nothing secret is on a command line."""

from __future__ import annotations

import os
import sys

from sqlalchemy import create_engine, text
from tenacity import retry, stop_after_delay, wait_fixed

from fedcore import migrations
from fedcore.tokens import hash_token


@retry(stop=stop_after_delay(30), wait=wait_fixed(0.5), reraise=True)
def _wait_for_database(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def migrate(url: str) -> None:
    _wait_for_database(url)
    migrations.upgrade(url)


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
        migrate(url)
    elif command == "admin-token":
        store_admin_token(url, os.environ["MOSAIC_ADMIN_TOKEN"])
    else:
        print("usage: python -m devstack.bootstrap migrate|admin-token", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
