"""The verbs service app."""

from __future__ import annotations

from fastapi import FastAPI

from fedcore.appkit import create_service_app
from verbs.routes import router
from verbs.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()  # read from the environment
    return create_service_app(title="mosaic-verbs", settings=settings, routers=[router])
