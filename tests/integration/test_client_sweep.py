"""Each verbs worker's cached outbound clients follow the connections table
(verbs.client_sweep): a retired or deleted connection's client — and the unsealed key in its TLS
context — leaves a worker that never queries it again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic import SecretStr

from fedcore.db import create_raw_pool
from fedcore.federation_client import FederationClientPool
from fedcore.sealing import Sealer
from fedcore.settings import PostgresSettings
from tests.support.db import execute
from tests.support.factories import connection_material, insert_connection
from tests.support.secrets import random_secret
from verbs.client_sweep import ClientSweeper

Pool = AsyncConnectionPool[AsyncConnection[Any]]


@pytest.fixture
def db(raw_pool: Pool) -> Pool:
    return raw_pool


@pytest.fixture
async def clients() -> AsyncIterator[FederationClientPool]:
    pool = FederationClientPool(Sealer(random_secret()), retire_after=0)
    try:
        yield pool
    finally:
        await pool.aclose()


def cache(clients: FederationClientPool, *connection_ids: uuid.UUID) -> None:
    sealer = clients._sealer
    for connection_id in connection_ids:
        clients.client_for(connection_material(sealer, connection_id=connection_id))


async def test_a_sweep_keeps_only_the_active_connections_clients(
    migrated_db_url: str, db: Pool, clients: FederationClientPool
) -> None:
    active = insert_connection(migrated_db_url, "active")
    retired = insert_connection(migrated_db_url, "active")
    deleted = insert_connection(migrated_db_url, "active")
    cache(clients, active, retired, deleted)
    kept = clients._clients[active]
    execute(
        migrated_db_url,
        "UPDATE federation_connections SET state = 'revoked' WHERE id = %s",
        (retired,),
    )
    execute(migrated_db_url, "DELETE FROM federation_connections WHERE id = %s", (deleted,))

    await ClientSweeper(clients, db, interval_seconds=3600).sweep()

    assert list(clients._clients) == [active]
    assert clients._clients[active] is kept


async def test_the_sweeper_runs_on_its_interval_until_stopped(
    migrated_db_url: str, db: Pool, clients: FederationClientPool
) -> None:
    retired = insert_connection(migrated_db_url, "revoked")
    cache(clients, retired)
    sweeper = ClientSweeper(clients, db, interval_seconds=0.05)
    sweeper.start()
    try:
        async with asyncio.timeout(5):
            while len(clients):  # noqa: ASYNC110 - polling the sweeper's effect
                await asyncio.sleep(0.05)
    finally:
        await sweeper.stop()
    assert len(clients) == 0
    assert sweeper._task is None


async def test_a_failed_sweep_is_logged_and_the_loop_goes_on(
    migrated_db_url: str, clients: FederationClientPool, caplog: pytest.LogCaptureFixture
) -> None:
    retired = insert_connection(migrated_db_url, "revoked")
    cache(clients, retired)
    closed = create_raw_pool(
        PostgresSettings(url=SecretStr(migrated_db_url)), name="test-sweep-closed"
    )  # never opened: every checkout fails
    sweeper = ClientSweeper(clients, closed, interval_seconds=0.02)
    sweeper.start()
    try:
        async with asyncio.timeout(5):
            while not [r for r in caplog.records if r.message == "client sweep failed"]:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert sweeper._task is not None
        assert not sweeper._task.done()
    finally:
        await sweeper.stop()
    assert len(clients) == 1  # nothing dropped without knowing what is active
    [record, *_] = [r for r in caplog.records if r.message == "client sweep failed"]
    assert record.error == "PoolClosed"  # type: ignore[attr-defined]
