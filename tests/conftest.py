"""Session fixtures: a real Postgres cluster and, for e2e tests, real gateways via the launcher."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresForTests, start_test_postgres, stop_test_postgres
from tests.support.stack import Gateway, start_gateways, stop_gateways


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
