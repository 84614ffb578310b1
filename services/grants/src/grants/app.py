"""The grants service app: the admin API (users, teams, peers, grants, tokens, outbound
connections, audit). The ca-broker client is created in the lifespan, never at import."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
from fastapi import FastAPI, Request

from fedcore.appkit import create_service_app
from fedcore.errors import error_body
from fedcore.responses import JsonResponse
from fedcore.scope import InvalidScope
from grants.routes import router
from grants.service import BrokerClient
from grants.settings import Settings


async def _invalid_scope(_: Request, exc: Exception) -> JsonResponse:
    # Same envelope as every error, plus the field paths (like request validation errors).
    assert isinstance(exc, InvalidScope)
    return JsonResponse(
        error_body(exc.code, exc.message, fields=exc.fields()), status_code=exc.status_code
    )


def create_app(
    settings: Settings | None = None,
    *,
    broker_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """``broker_transport`` lets tests drive a real ca-broker app in-process."""
    settings = settings or Settings()  # read from the environment

    async def on_startup(app: FastAPI) -> Callable[[], Awaitable[None]]:
        client = httpx.AsyncClient(
            base_url=settings.ca_broker_url,
            headers={
                "Authorization": f"Bearer {settings.secrets.service_token.get_secret_value()}"
            },
            timeout=httpx.Timeout(settings.ca_broker_timeout_seconds),
            transport=broker_transport,
        )
        app.state.broker = BrokerClient(client)
        return client.aclose

    app = create_service_app(
        title="mosaic-grants", settings=settings, routers=[router], on_startup=on_startup
    )
    app.add_exception_handler(InvalidScope, _invalid_scope)
    return app
