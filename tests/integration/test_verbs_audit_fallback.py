"""When the verbs' raw pool cannot give a request a connection (exhausted, or its connections are
dead after a database restart), the request is still answered with a stable code and still leaves
exactly one audit row — written through the SQLAlchemy engine, whose pool pings before use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from psycopg_pool import PoolTimeout
from pydantic import SecretStr
from starlette.requests import Request

from fedcore.db import DatabaseBusy, create_engine, create_sessionmaker
from fedcore.scope import ScopePolicy
from fedcore.settings import PostgresSettings
from tests.support.db import fetch_all
from verbs.auth import InboundAuthenticator
from verbs.service import VerbService


class ExhaustedPool:
    """A pool that has no connection to give within its timeout."""

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        raise PoolTimeout("couldn't get a connection after 10.00 sec")
        yield  # pragma: no cover - an async generator


class NeverAuthenticates:
    async def authenticate(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("no connection, no trust path")


def a_request() -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "headers": []})


async def test_no_connection_is_503_database_busy_and_one_audit_row(migrated_db_url: str) -> None:
    engine = create_engine(PostgresSettings(url=SecretStr(migrated_db_url)))
    try:
        service = VerbService(
            authenticator=cast(InboundAuthenticator, NeverAuthenticates()),
            pool=cast(Any, ExhaustedPool()),
            policy=ScopePolicy(),
            source_name="a",
            sessionmaker=create_sessionmaker(engine),
        )

        async def action(*_: Any) -> Any:
            raise AssertionError("not reached")

        with pytest.raises(DatabaseBusy) as refused:
            await service.run(a_request(), "list", "tasks", action)
        assert refused.value.status_code == 503
        assert refused.value.code == "database_busy"
    finally:
        await engine.dispose()
    rows = fetch_all(
        migrated_db_url,
        "SELECT action, outcome::text, reason_code, resource FROM federation_audit_log",
    )
    assert rows == [("verb.list", "error", "database_busy", "tasks")]
