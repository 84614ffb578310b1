"""The grants service app: the admin API (users, teams, peers, grants, tokens, outbound
connections, audit). The ca-broker client and the connection-renewal task are created in the
lifespan, never at import."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import httpx
from fastapi import FastAPI

from fedcore.appkit import create_service_app
from fedcore.broker_client import CaBrokerClient
from grants.renewal import renewal_loop
from grants.routes import router
from grants.settings import Settings


def create_app(
    settings: Settings | None = None,
    *,
    broker_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """``broker_transport`` lets tests drive a real ca-broker app in-process."""
    settings = settings or Settings()  # read from the environment

    async def on_startup(app: FastAPI) -> Callable[[], Awaitable[None]]:
        broker = CaBrokerClient(
            settings.ca_broker_url,
            settings.secrets.value("service_token"),
            timeout=settings.ca_broker_timeout_seconds,
            transport=broker_transport,
        )
        app.state.broker = broker
        renewals = (
            asyncio.get_running_loop().create_task(
                renewal_loop(app.state.sessionmaker, settings), name="connection-renewal"
            )
            if settings.connection_renewal_interval_seconds > 0
            else None
        )

        async def cleanup() -> None:
            if renewals is not None:
                renewals.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewals
            await broker.aclose()

        return cleanup

    return create_service_app(
        title="mosaic-grants", settings=settings, routers=[router], on_startup=on_startup
    )
