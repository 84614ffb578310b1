"""Start a service: load settings, wait for the database, then hand over to uvicorn.

Bad configuration must stop a service with one clear line, not a traceback wall: a missing or
placeholder secret exits 2, an unreachable database exits 3. Values are never printed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from pydantic_settings import SettingsError
from tenacity import AsyncRetrying, RetryError, retry_if_result, stop_after_delay, wait_fixed

from fedcore.db import create_engine, database_is_reachable
from fedcore.http_protocol import CoalescingHttpToolsProtocol
from fedcore.jsonlog import configure_logging
from fedcore.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)

EXIT_BAD_CONFIG = 2
EXIT_DB_UNREACHABLE = 3


def describe_validation_error(service: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        location = ".".join(str(part) for part in err.get("loc", ()))
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{location}: {message}" if location else message)
    return f"{service}: invalid configuration: " + "; ".join(problems)


def load_settings_or_exit(service: str, settings_cls: type[S]) -> S:
    try:
        return settings_cls()  # fields come from the environment
    except ValidationError as exc:
        print(describe_validation_error(service, exc), file=sys.stderr)
        raise SystemExit(EXIT_BAD_CONFIG) from None
    except SettingsError as exc:
        # An environment value that is not even parseable (a malformed JSON list): its
        # message names the field, never the value.
        print(f"{service}: invalid configuration: {exc}", file=sys.stderr)
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


def worker_app(service: str, settings_cls: type[S], app_factory: Callable[[S], FastAPI]) -> FastAPI:
    """The app of one worker process (``workers > 1``): uvicorn starts each worker afresh, so
    settings and logging are set up again there, from the same environment."""
    settings = load_settings_or_exit(service, settings_cls)
    configure_logging(service, settings.log_level)
    return _service_process_app(app_factory(settings))


def _service_process_app(app: FastAPI) -> FastAPI:
    """Settings only a whole service process gets (not an app built in a test's process)."""
    app.state.freeze_gc_after_start = True  # fedcore.appkit: gc.freeze() after start
    return app


def run_service(
    service: str,
    settings_cls: type[S],
    app_factory: Callable[[S], FastAPI],
    *,
    workers: Callable[[S], int] | None = None,
    worker_factory: str | None = None,
) -> None:
    """Check the configuration and the database, then serve.

    A service that may run several worker processes passes ``workers`` (how many, from its
    settings) and ``worker_factory``, the import string of a zero-argument function returning
    its app (built with :func:`worker_app`): uvicorn's supervisor imports it in every worker,
    shares one listening socket between them and restarts a worker that dies. The checks run
    once, here, before any worker starts.
    """
    settings = load_settings_or_exit(service, settings_cls)
    configure_logging(service, settings.log_level)
    if not asyncio.run(_wait_for_database(settings)):
        print(
            f"{service}: database unreachable after {settings.db.startup_wait_seconds:g}s "
            "(check FED_*_DB__URL and that Postgres is running)",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_DB_UNREACHABLE)
    count = workers(settings) if workers is not None else 1
    server_options: dict[str, Any] = {
        "host": settings.bind_host,
        "port": settings.bind_port,
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,
        "server_header": False,
        "loop": "uvloop",
        "http": CoalescingHttpToolsProtocol,  # httptools, a response in one send
        "ws": "none",  # no service speaks WebSocket: no upgrade is accepted
        "timeout_keep_alive": 75,
    }
    if count > 1 and worker_factory is not None:
        uvicorn.run(worker_factory, factory=True, workers=count, **server_options)
    else:
        uvicorn.run(_service_process_app(app_factory(settings)), **server_options)
