"""A service process freezes what it built at start out of the garbage collector's reach (the
verbs' latency tail under load was full collections walking the whole heap); an app built inside
a test's process does not."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from fastapi import FastAPI

from fedcore.appkit import create_service_app
from fedcore.runner import _service_process_app
from grants.settings import Settings
from tests.support.secrets import random_secret

UNREACHABLE_DB = "postgresql+psycopg://nobody:nothing@127.0.0.1:1/none"  # never connected to


def settings() -> Settings:
    return Settings(
        db={"url": UNREACHABLE_DB},
        secrets={
            "gateway_secret": random_secret(),
            "proxy_secret": random_secret(),
            "service_token": random_secret(),
        },
    )


async def started(app: FastAPI) -> int:
    async with app.router.lifespan_context(app):
        return gc.get_freeze_count()


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


async def test_an_app_built_in_a_test_process_does_not_freeze() -> None:
    app = create_service_app(title="t", settings=settings(), routers=[])
    assert await started(app) == 0


async def test_a_service_process_freezes_after_start() -> None:
    # What fedcore.runner does to the app of a service process (run_service, worker_app).
    app = _service_process_app(create_service_app(title="t", settings=settings(), routers=[]))
    assert await started(app) > 0
