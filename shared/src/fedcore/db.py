"""Async SQLAlchemy engine on psycopg 3 and the unit-of-work session dependency.

A request gets one session; it commits when the handler returns and rolls back when it raises,
so a refused request never leaves half a change behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from fedcore.settings import PostgresSettings


def create_engine(settings: PostgresSettings) -> AsyncEngine:
    return create_async_engine(
        settings.url.get_secret_value(),
        pool_size=settings.pool_size,
        max_overflow=settings.pool_size,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": max(1, int(settings.connect_timeout_seconds)),
            # No request can hold a connection with a runaway query.
            "options": f"-c statement_timeout={settings.statement_timeout_ms}",
        },
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
