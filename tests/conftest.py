"""Session fixtures: a real Postgres cluster and, for e2e tests, real gateways via the launcher."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic import SecretStr

from fedcore.db import create_raw_pool
from fedcore.settings import PostgresSettings
from tests.support.postgres import PostgresForTests, start_test_postgres, stop_test_postgres
from tests.support.stack import Gateway, start_gateways, stop_gateways

# Property tests check behaviour, not speed: Hypothesis's per-example deadline (200 ms) is a timed
# assertion, and on a loaded 2-core CI box a slow example fails the run as "Flaky". Speed is
# measured by `make bench`. A test's own @settings still override the rest of the profile.
hypothesis_settings.register_profile("mosaic", deadline=None, print_blob=True)
hypothesis_settings.load_profile("mosaic")


@pytest.fixture(scope="session")
def test_postgres() -> Iterator[PostgresForTests]:
    pg, root = start_test_postgres()
    try:
        yield pg
    finally:
        stop_test_postgres(pg, root)


@pytest.fixture
def migrated_db_url(test_postgres: PostgresForTests) -> Iterator[str]:
    """A fresh, fully migrated database for one test."""
    name = test_postgres.create_migrated_database()
    try:
        yield test_postgres.url(name)
    finally:
        test_postgres.drop_database(name)


@pytest.fixture
async def raw_pool(
    migrated_db_url: str,
) -> AsyncIterator[AsyncConnectionPool[AsyncConnection[Any]]]:
    """The services' raw psycopg pool (``fedcore.db.create_raw_pool``) on a fresh database."""
    pool = create_raw_pool(PostgresSettings(url=SecretStr(migrated_db_url)), name="test-raw")
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="session")
def gateways() -> Iterator[list[Gateway]]:
    """Two gateways (a on <test net>.12, b on .13) started by the real launcher."""
    started, root = start_gateways(2)
    try:
        yield started
    finally:
        stop_gateways(root)


@pytest.fixture(scope="session")
def gateway_a(gateways: list[Gateway]) -> Gateway:
    return gateways[0]


@pytest.fixture(scope="session")
def gateway_b(gateways: list[Gateway]) -> Gateway:
    return gateways[1]
