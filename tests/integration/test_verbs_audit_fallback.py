"""When the verbs' raw pool cannot give a request a connection (exhausted, or its connections are
dead after a database restart), the request is still answered with a stable code and still leaves
exactly one audit row — written through the SQLAlchemy engine, whose pool pings before use. And a
peer that leaves mid-body leaves one error row with its identity (`client_disconnected`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from psycopg_pool import PoolTimeout
from pydantic import SecretStr
from starlette.requests import ClientDisconnect, Request

from fedcore.db import DatabaseBusy, create_engine, create_raw_pool, create_sessionmaker
from fedcore.scope import ScopePolicy
from fedcore.settings import PostgresSettings
from tests.support.db import fetch_all
from verbs.auth import InboundAuthenticator, PartialIdentity
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


class KnownPeer:
    """Authenticates as a fixed identity (the trust path itself is tested elsewhere)."""

    def __init__(self) -> None:
        self.grant_id, self.subject, self.peer = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    async def authenticate(self, _: Any, __: Any, known: PartialIdentity, **___: Any) -> Any:
        known.serial, known.grant_id = "0a1b", self.grant_id
        known.subject_user_id, known.peer_id = self.subject, self.peer
        return object()


async def test_a_peer_that_leaves_mid_body_leaves_one_error_row_client_disconnected(
    migrated_db_url: str,
) -> None:
    settings = PostgresSettings(url=SecretStr(migrated_db_url))
    engine = create_engine(settings)
    pool = create_raw_pool(settings, name="test-verbs")
    await pool.open()
    peer = KnownPeer()
    try:
        service = VerbService(
            authenticator=cast(InboundAuthenticator, peer),
            pool=pool,
            policy=ScopePolicy(),
            source_name="a",
            sessionmaker=create_sessionmaker(engine),
        )

        async def action(*_: Any) -> Any:
            raise ClientDisconnect()  # what reading the body raises when nginx hangs up

        with pytest.raises(ClientDisconnect):  # fedcore.errors answers it: 400
            await service.run(a_request(), "search", "notes", action)
    finally:
        await pool.close()
        await engine.dispose()
    rows = fetch_all(
        migrated_db_url,
        "SELECT action, outcome::text, reason_code, resource, grant_id, peer_id, "
        "subject_user_id, cert_serial FROM federation_audit_log",
    )
    assert rows == [
        (
            "verb.search",
            "error",
            "client_disconnected",
            "notes",
            peer.grant_id,
            peer.peer,
            peer.subject,
            "0a1b",
        )
    ]
