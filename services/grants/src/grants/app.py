"""The grants service app."""

from __future__ import annotations

from fastapi import FastAPI

from fedcore.appkit import create_service_app
from grants.routes import router
from grants.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()  # read from the environment
    return create_service_app(title="mosaic-grants", settings=settings, routers=[router])
