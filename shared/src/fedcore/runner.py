"""Start a service: load settings, wait for the database, then hand over to uvicorn.

Bad configuration must stop a service with one clear line, not a traceback wall: a missing or
placeholder secret exits 2, an unreachable database exits 3. Values are never printed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TypeVar

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryError, retry_if_result, stop_after_delay, wait_fixed

from fedcore.db import create_engine, database_is_reachable
from fedcore.jsonlog import configure_logging
from fedcore.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)

EXIT_BAD_CONFIG = 2
EXIT_DB_UNREACHABLE = 3


def describe_validation_error(service: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        location = ".".join(str(part) for part in err.get("loc", ()))
        problems.append(f"{location}: {err.get('msg', 'invalid')}")
    return f"{service}: invalid configuration: " + "; ".join(problems)


def load_settings_or_exit(service: str, settings_cls: type[S]) -> S:
    try:
        return settings_cls()  # fields come from the environment
    except ValidationError as exc:
        print(describe_validation_error(service, exc), file=sys.stderr)
        raise SystemExit(EXIT_BAD_CONFIG) from None


async def _wait_for_database(settings: ServiceSettings) -> bool:
    engine = create_engine(settings.db)
    try:
        retrying = AsyncRetrying(
            stop=stop_after_delay(settings.db.startup_wait_seconds),
            wait=wait_fixed(0.5),
            retry=retry_if_result(lambda reachable: not reachable),
        )
        return bool(await retrying(database_is_reachable, engine))
    except RetryError:
        return False
    finally:
        await engine.dispose()


def run_service(service: str, settings_cls: type[S], app_factory: Callable[[S], FastAPI]) -> None:
    settings = load_settings_or_exit(service, settings_cls)
    configure_logging(service, settings.log_level)
    if not asyncio.run(_wait_for_database(settings)):
        print(
            f"{service}: database unreachable after {settings.db.startup_wait_seconds:g}s "
            "(check FED_*_DB__URL and that Postgres is running)",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_DB_UNREACHABLE)
    app = app_factory(settings)
    uvicorn.run(
        app,
        host=settings.bind_host,
        port=settings.bind_port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        loop="uvloop",
        http="httptools",
        timeout_keep_alive=75,
    )
