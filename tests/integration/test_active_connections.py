"""The fan-out's connection read (verbs.reads.active_connections) against a real Postgres: the
active connections only, by name, each with its circuit (or none) and the database's clock."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from tests.support.db import execute
from tests.support.factories import insert_connection
from verbs import reads
from verbs.circuit import CircuitRecord


async def test_only_active_connections_by_name_with_their_circuits(
    migrated_db_url: str, raw_pool: AsyncConnectionPool[AsyncConnection[Any]]
) -> None:
    zulu = insert_connection(migrated_db_url, "active", "zulu")
    alpha = insert_connection(migrated_db_url, "active", "alpha")
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
        now = (await (await conn.execute("SELECT now()")).fetchone() or [None])[0]
    assert [(row.id, row.name, row.state) for row in rows] == [
        (alpha, "alpha", "active"),
        (zulu, "zulu", "active"),
    ]
    assert CircuitRecord.from_row(rows[0]).clean  # no circuit row: closed, nothing counted
    opened = CircuitRecord.from_row(rows[1])
    assert opened.consecutive_failures == 3
    assert opened.last_failure_code == "peer_unreachable"
    assert opened.opened_at is not None
    assert all(row.db_now is not None and row.db_now <= now for row in rows)
    assert rows[0].cert_pem == "PEM"
    assert rows[0].sealed_private_key == b"\x00"
