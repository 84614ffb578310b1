"""Each verbs worker's cached outbound clients follow the connections table, even when the
worker serves no query that would notice a change.

A cached client holds its connection's private key, unsealed, in its TLS context. A query
drops the client of a connection it finds inactive (``source: all`` keeps only the active ones;
``federated:<name>`` drops a retired one), but a worker that only ever answers other queries
would keep a retired connection's key in memory until it restarts. So every
``interval_seconds`` each worker reads the active connection ids and drops every other client
(:meth:`fedcore.federation_client.FederationClientPool.retain`): a retired or deleted
connection's key leaves every worker's memory within that interval. A dropped client is closed
after the pool's grace period, so a call in flight on it finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from fedcore.federation_client import FederationClientPool

log = logging.getLogger("verbs.client_sweep")

_ACTIVE_IDS = "SELECT id FROM federation_connections WHERE state = 'active'"


class ClientSweeper:
    def __init__(
        self,
        clients: FederationClientPool,
        db: AsyncConnectionPool[AsyncConnection[Any]],
        interval_seconds: float,
    ) -> None:
        self.clients = clients
        self.db = db
        self.interval_seconds = interval_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sweep(self) -> None:
        """Drop the client of every connection that is not active now."""
        if not len(self.clients):
            return  # nothing cached: no statement
        async with self.db.connection() as conn:
            rows = await (await conn.execute(_ACTIVE_IDS)).fetchall()
        self.clients.retain(row[0] for row in rows)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_seconds)
            try:
                await self.sweep()
            except Exception as exc:  # the type only: a message may carry connection details
                log.warning("client sweep failed", extra={"error": type(exc).__name__})
