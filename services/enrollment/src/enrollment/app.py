"""The enrollment service app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI

from enrollment.routes import router
from enrollment.service import EnrollmentService
from enrollment.settings import Settings
from fedcore.appkit import create_service_app
from fedcore.broker_client import CaBrokerClient


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()  # read from the environment

    async def on_startup(app: FastAPI) -> Callable[[], Awaitable[None]]:
        broker = CaBrokerClient(
            settings.ca_broker_url,
            settings.secrets.value("service_token"),
            timeout=settings.ca_timeout_seconds,
        )
        app.state.enrollment_service = EnrollmentService(
            broker=broker,
            sessionmaker=app.state.sessionmaker,
            public_url=settings.public_url,
            ca_deadline_seconds=settings.ca_deadline_seconds,
        )
        return broker.aclose

    return create_service_app(
        title="mosaic-enrollment", settings=settings, routers=[router], on_startup=on_startup
    )
