"""A client that leaves while its body is read is not an error of ours: a stable code, and no
error-level log line (under load nginx does this to every request in flight when wrk stops)."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import pytest
from fastapi import FastAPI, Request

from fedcore.errors import install_error_handlers


def app_reading_the_body() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/read")
    async def read(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    return app


async def test_a_disconnect_while_reading_the_body_is_answered_and_logged_as_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": "/read",
        "raw_path": b"/read",
        "query_string": b"",
        "headers": [(b"content-length", b"10")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "scheme": "http",
        "root_path": "",
    }
    with caplog.at_level(logging.INFO):
        await app_reading_the_body()(scope, receive, send)
    assert sent[0]["status"] == 400
    assert b'"code":"client_disconnected"' in sent[1]["body"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
