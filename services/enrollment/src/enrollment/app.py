"""The enrollment service app."""

from __future__ import annotations

from fastapi import FastAPI

from enrollment.routes import router
from enrollment.settings import Settings
from fedcore.appkit import create_service_app


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()  # read from the environment
    return create_service_app(title="mosaic-enrollment", settings=settings, routers=[router])
