"""The ca-broker app (local backend) against a fresh migrated database."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from ca_broker.app import create_app
from ca_broker.settings import Settings
from tests.support.apps import running
from tests.support.secrets import random_secret


@dataclass
class Broker:
    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings
    database_url: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.secrets.value('service_token')}"}

    @property
    def pki_dir(self) -> Path:
        return Path(self.settings.pki_dir)


def broker_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "db": {"url": database_url},
        "secrets": {
            "gateway_secret": random_secret(),
            "proxy_secret": random_secret(),
            "service_token": random_secret(),
        },
        "pki_dir": tempfile.mkdtemp(prefix="mosaic-test-pki-"),
        "ca_key_secret": random_secret(),
        "gateway_name": "gw-test",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def broker(migrated_db_url: str) -> AsyncIterator[Broker]:
    settings = broker_settings(migrated_db_url)
    app = create_app(settings)
    async with running(app) as client:
        yield Broker(app, client, settings, migrated_db_url)
