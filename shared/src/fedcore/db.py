"""Async SQLAlchemy engine on psycopg 3 and the unit-of-work session dependency.

A request gets one session; it commits when the handler returns and rolls back when it raises,
so a refused request never leaves half a change behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from fedcore.errors import UpstreamUnavailable
from fedcore.settings import PostgresSettings


def _connect_args(settings: PostgresSettings) -> dict[str, Any]:
    return {
        "connect_timeout": max(1, int(settings.connect_timeout_seconds)),
        # No request can hold a connection with a runaway query.
        # A lock wait gives up before any HTTP timeout of a caller (e.g. enrollment's call
        # to the broker), so a lock cycle across services ends as a clean, retryable error.
        # The last two pin what a role default could otherwise change under every service
        # (a role may alter its own defaults: fedcore.db_roles resets them at each migrate).
        "options": (
            f"-c statement_timeout={settings.statement_timeout_ms} "
            f"-c lock_timeout={settings.lock_timeout_ms} "
            "-c default_transaction_read_only=off -c search_path=public"
        ),
    }


def create_engine(settings: PostgresSettings) -> AsyncEngine:
    return create_async_engine(
        settings.url.get_secret_value(),
        pool_size=settings.pool_size,
        max_overflow=settings.pool_size,
        pool_pre_ping=True,
        connect_args=_connect_args(settings),
    )


def libpq_conninfo(settings: PostgresSettings) -> str:
    """The database URL for psycopg itself (without SQLAlchemy's ``+psycopg`` driver part)."""
    url = make_url(settings.url.get_secret_value()).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


async def connect_raw(settings: PostgresSettings) -> psycopg.AsyncConnection[Any]:
    """One autocommit connection outside any pool (e.g. a ``LISTEN`` that stays open)."""
    return await psycopg.AsyncConnection.connect(
        libpq_conninfo(settings), autocommit=True, **_connect_args(settings)
    )


def create_raw_pool(settings: PostgresSettings, *, name: str) -> AsyncConnectionPool[Any]:
    """A psycopg pool of autocommit connections, for a hot path's few fixed statements.

    Same database, timeouts and size as the engine's pool. No ping on checkout (one round trip
    per request saved): a connection broken under a request fails that request, and the pool
    drops it when it comes back. Opened by the caller (``await pool.open()``).
    """
    return AsyncConnectionPool(
        libpq_conninfo(settings),
        min_size=min(2, settings.pool_size),
        max_size=settings.pool_size * 2,
        kwargs={"autocommit": True, **_connect_args(settings)},
        timeout=settings.connect_timeout_seconds + 5,
        name=name,
        open=False,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def database_is_reachable(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:  # any failure means "not ready"; /readyz reports it, never raises
        return False
    return True


async def unit_of_work(request: Request) -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: one session per request, commit on success, rollback on error."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


# scope="function": the commit happens before the response is sent. With the default (request)
# scope FastAPI sends the answer first, so a failed commit would follow a 2xx the client already
# has (e.g. a certificate the CA never recorded).
SessionDep = Annotated[AsyncSession, Depends(unit_of_work, scope="function")]


# SQLSTATEs of contention: deadlock detected, lock not available, statement/lock timeout.
_CONTENTION_SQLSTATES = frozenset({"40P01", "55P03", "57014", "40001"})


class DatabaseBusy(UpstreamUnavailable):
    default_code = "database_busy"

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": "1"}


def contention_error(exc: BaseException) -> DatabaseBusy | None:
    """A retryable domain error for lock contention or an exhausted raw pool (so it is answered
    and audited like any refusal), or None for anything else. Takes SQLAlchemy's wrapped errors
    and raw psycopg ones."""
    if isinstance(exc, PoolTimeout):
        return DatabaseBusy("the database is busy; retry shortly")
    driver_error = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(driver_error, psycopg.Error) and driver_error.sqlstate in _CONTENTION_SQLSTATES:
        return DatabaseBusy("the database is busy; retry shortly")
    return None
