"""The local query API under database contention: an exhausted raw pool is a retryable
``503 database_busy`` with its audit row, as at the inbound verbs — not a 500 (review finding).
Real Postgres, the services' own pools; the raw pool is made exhausted by holding its one
connection."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool
from pydantic import SecretStr

from fedcore.admin_auth import AdminPrincipal
from fedcore.db import DatabaseBusy, create_engine, create_sessionmaker, libpq_conninfo
from fedcore.federation_client import FederationClientPool
from fedcore.models import AdminRole
from fedcore.sealing import Sealer
from fedcore.settings import PostgresSettings
from tests.support.db import execute, fetch_all
from verbs.circuit import CircuitBreakers, CircuitPolicy
from verbs.fanout import FanOut
from verbs.local_schemas import LocalQueryRequest
from verbs.local_service import LocalQueryService


@pytest.mark.parametrize("source", ["all", "local"])
async def test_an_exhausted_pool_is_database_busy_and_audited(
    migrated_db_url: str, source: str
) -> None:
    user = uuid.uuid4()
    execute(
        migrated_db_url,
        "INSERT INTO users (id, username, display_name) VALUES (%s, %s, 'u')",
        (user, f"u-{user.hex[:8]}"),
    )
    settings = PostgresSettings(url=SecretStr(migrated_db_url))
    engine = create_engine(settings)
    rows_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        libpq_conninfo(settings), min_size=1, max_size=1, timeout=0.3, open=False,
        kwargs={"autocommit": True},
    )  # fmt: skip
    await rows_pool.open(wait=True)
    sessionmaker = create_sessionmaker(engine)
    client_pool = FederationClientPool(Sealer("x" * 32))
    service = LocalQueryService(
        sessionmaker=sessionmaker,
        rows_pool=rows_pool,
        fanout=FanOut(client_pool, CircuitBreakers(rows_pool, CircuitPolicy(3, 30, 10)), 2.5),
        pool=client_pool,
        source_name="b",
        default_limit=50,
        max_limit=100,
    )
    principal = AdminPrincipal(token_id=uuid.uuid4(), role=AdminRole.ADMIN, user_id=None)

    async def parse() -> LocalQueryRequest:
        return LocalQueryRequest(source=source, as_user=user)

    try:
        async with rows_pool.connection(), sessionmaker() as session:  # the pool's only one
            with pytest.raises(DatabaseBusy) as refused:
                await asyncio.wait_for(service.query(session, principal, "tasks", parse), 10)
        assert refused.value.code == "database_busy"
        rows = fetch_all(
            migrated_db_url,
            "SELECT outcome, reason_code FROM federation_audit_log WHERE action = 'local.query'",
        )
        assert rows == [("error", "database_busy")]
    finally:
        await client_pool.aclose()
        await rows_pool.close()
        await engine.dispose()
