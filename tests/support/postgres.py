"""A private Postgres cluster for the test session, and cheap per-test databases.

The cluster is initialised once per session; the schema is migrated once into a template
database; every test that needs a clean database gets ``CREATE DATABASE … TEMPLATE`` (tens of
milliseconds) instead of re-running migrations.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from devstack.postgres import PostgresCluster
from fedcore import migrations
from tests.support.net import host

TEST_PG_PORT = 55432
TEMPLATE_DB = "mosaic_template"


@dataclass
class PostgresForTests:
    cluster: PostgresCluster
    password: str

    def url(self, database: str) -> str:
        return self.cluster.url(self.password, database)

    def admin_connection(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=self.cluster.host,
            port=self.cluster.port,
            user=self.cluster.superuser,
            password=self.password,
            dbname="postgres",
            autocommit=True,
        )

    def create_empty_database(self) -> str:
        name = f"t_{secrets.token_hex(6)}"
        with self.admin_connection() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def create_migrated_database(self) -> str:
        name = f"t_{secrets.token_hex(6)}"
        with self.admin_connection() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin_connection() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_test_postgres() -> tuple[PostgresForTests, Path]:
    root = Path(tempfile.mkdtemp(prefix="mosaic-test-pg-"))
    root.chmod(0o755)
    cluster = PostgresCluster(root / "pg", host(10), TEST_PG_PORT)
    password = secrets.token_urlsafe(18)
    cluster.init(password)
    cluster.start()
    pg = PostgresForTests(cluster, password)
    with pg.admin_connection() as conn:
        conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    migrations.upgrade(pg.url(TEMPLATE_DB))
    return pg, root


def stop_test_postgres(pg: PostgresForTests, root: Path) -> None:
    try:
        pg.cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
