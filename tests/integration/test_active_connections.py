"""The fan-out's connection read (verbs.reads.active_connections) against a real Postgres: the
active connections only, by name, each with its circuit (or none) and the database's clock, and
every column a call needs arriving in its own place — the same ConnectionMaterial the
SQLAlchemy path (``federated:<name>``) builds, so the two never disagree on an identity."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from fedcore.federation_client import ConnectionMaterial
from tests.support.db import execute
from tests.support.factories import insert_connection
from verbs import reads, repository
from verbs.circuit import CircuitRecord


async def test_only_active_connections_by_name_with_their_circuits(
    migrated_db_url: str, raw_pool: AsyncConnectionPool[AsyncConnection[Any]]
) -> None:
    # Ids in the opposite order to the names: the order checked is the names'.
    zulu = insert_connection(migrated_db_url, "active", "zulu")
    alpha = insert_connection(migrated_db_url, "active", "alpha")
    execute(migrated_db_url, "UPDATE federation_connections SET id = %s WHERE id = %s",
            (uuid.UUID(int=1), zulu))  # fmt: skip
    execute(migrated_db_url, "UPDATE federation_connections SET id = %s WHERE id = %s",
            (uuid.UUID(int=2), alpha))  # fmt: skip
    zulu, alpha = uuid.UUID(int=1), uuid.UUID(int=2)
    insert_connection(migrated_db_url, "pending", "bravo")
    insert_connection(migrated_db_url, "revoked", "charlie")
    execute(
        migrated_db_url,
        "INSERT INTO federation_circuits (connection_id, consecutive_failures, "
        "last_failure_code, opened_at, updated_at) VALUES (%s, 3, 'peer_unreachable', now(), "
        "now())",
        (zulu,),
    )
    async with raw_pool.connection() as conn:
        rows = await reads.active_connections(conn)
    assert [(row.id, row.name, row.state) for row in rows] == [
        (alpha, "alpha", "active"),
        (zulu, "zulu", "active"),
    ]
    assert CircuitRecord.from_row(rows[0]).clean  # no circuit row: closed, nothing counted
    opened = CircuitRecord.from_row(rows[1])
    assert opened.consecutive_failures == 3
    assert opened.last_failure_code == "peer_unreachable"


async def test_every_column_arrives_in_its_place(
    migrated_db_url: str, raw_pool: AsyncConnectionPool[AsyncConnection[Any]]
) -> None:
    connection_id = uuid.uuid4()
    execute(
        migrated_db_url,
        "INSERT INTO federation_connections (id, name, state, endpoint_url, cert_pem, "
        "cert_chain_pem, ca_bundle_pem, cert_serial, remote_grant_id, sealed_private_key) "
        "VALUES (%s, 'only', 'active', 'https://peer.example:8443/', 'CERT', 'CHAIN', 'CA', "
        "'0abc', %s, %s)",
        (connection_id, uuid.uuid4(), b"\x01sealed"),
    )
    execute(
        migrated_db_url,
        "INSERT INTO federation_circuits (connection_id, consecutive_failures, last_failure_code,"
        " opened_at, probe_started_at, updated_at) VALUES (%s, 4, 'peer_timeout', "
        "now() - interval '10 minutes', now() - interval '5 minutes', now())",
        (connection_id,),
    )
    async with raw_pool.connection() as conn:
        [row] = await reads.active_connections(conn)
        opened, probed = await (
            await conn.execute("SELECT opened_at, probe_started_at FROM federation_circuits")
        ).fetchone() or (None, None)
    material = ConnectionMaterial.from_row(row)
    assert material == ConnectionMaterial(
        id=connection_id,
        name="only",
        endpoint_url="https://peer.example:8443",
        cert_pem="CERT",
        cert_chain_pem="CHAIN",
        ca_bundle_pem="CA",
        sealed_private_key=b"\x01sealed",
        cert_serial="0abc",
    )
    assert CircuitRecord.from_row(row) == CircuitRecord(4, "peer_timeout", opened, probed)
    assert opened is not None
    assert probed is not None
    assert row.db_now > probed > opened
    # The federated:<name> path (SQLAlchemy) builds an equal material: no client churn.
    engine = create_async_engine(migrated_db_url)
    try:
        async with async_sessionmaker(engine)() as session:
            orm_row = await repository.connection_by_name(session, "only")
        assert ConnectionMaterial.from_row(orm_row) == material
    finally:
        await engine.dispose()
