"""Helpers for the fan-out tests: enrolling B at A with the real CLI, calling B's local query API,
and peers that are not there (a blackholed port, a closed port)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.cli import mosaic_json
from tests.support.db import fetch_all
from tests.support.stack import Gateway


@dataclass(frozen=True)
class Enrolled:
    """An outbound connection on B and the grant on A it was enrolled with."""

    name: str
    connection: dict[str, Any]
    grant: dict[str, Any]
    peer: dict[str, Any]


def enroll_b_at_a(
    a: Gateway,
    b: Gateway,
    subject_user_id: uuid.UUID,
    scope: dict[str, Any],
    folder: Path,
    prefix: str = "to-a",
) -> Enrolled:
    """A: peer + grant + token (CLI); B: ``mosaic federation peer add`` (CLI)."""
    suffix = uuid.uuid4().hex[:8]
    peer = mosaic_json("federation", "peer", "create", f"b-{prefix}-{suffix}", gateway=a)
    scope_file = folder / f"scope-{suffix}.json"
    scope_file.write_text(json.dumps(scope))
    grant = mosaic_json(
        "federation",
        "grant",
        "create",
        "--user",
        str(subject_user_id),
        "--peer",
        peer["id"],
        "--scope",
        str(scope_file),
        gateway=a,
    )
    token = mosaic_json("federation", "grant", "token", grant["id"], gateway=a)
    name = f"{prefix}-{suffix}"
    connection = mosaic_json(
        "federation", "peer", "add", token["enrollment_url"], "--name", name, gateway=b
    )
    assert connection["state"] == "active", connection
    return Enrolled(name, connection, grant, peer)


def user_token(gateway: Gateway, user_id: uuid.UUID) -> str:
    created = mosaic_json(
        "admin",
        "token",
        "create",
        "--role",
        "user",
        "--user",
        str(user_id),
        "--database-url",
        gateway.database_url,
        gateway=gateway,
    )
    return str(created["token"])


class LocalApi:
    """B's local query API through its nginx admin listener."""

    def __init__(self, gateway: Gateway, token: str) -> None:
        self.gateway = gateway
        self.token = token
        # One keep-alive client: what is measured is the gateway, not a client's set-up.
        self._http = httpx.Client(base_url=gateway.admin_url, timeout=60)

    def close(self) -> None:
        self._http.close()

    def post(self, resource: str, body: dict[str, Any], token: str | None = None) -> httpx.Response:
        return self._http.post(
            f"/api/local/v1/query/{resource}",
            json=body,
            headers={"Authorization": f"Bearer {token or self.token}"},
        )

    def query(self, resource: str, **body: Any) -> dict[str, Any]:
        response = self.post(resource, body)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def timed(self, resource: str, **body: Any) -> tuple[dict[str, Any], float]:
        """The answer and the seconds until its last byte arrived (decoding the JSON here is
        the client's cost, not the gateway's: a 5-source answer is 5x the bytes to parse)."""
        started = time.perf_counter()
        response = self.post(resource, body)  # reads the whole body
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer, elapsed


def redirect_connection(b: Gateway, name: str, endpoint_url: str) -> None:
    """Point a connection somewhere else (test-only: B has no API to move a connection)."""
    rows = fetch_all(
        b.database_url,
        "UPDATE federation_connections SET endpoint_url = %s WHERE name = %s RETURNING id",
        (endpoint_url, name),
    )
    assert len(rows) == 1


def retire_connection(b: Gateway, name: str) -> dict[str, Any] | None:
    """Take a connection out of `source=all` for good: `mosaic federation connection retire`.
    Also a clean-up step: a connection that is not active (already retired) is left alone."""
    [(connection_id, state)] = fetch_all(
        b.database_url,
        "SELECT id, state::text FROM federation_connections WHERE name = %s",
        (name,),
    )
    if state != "active":
        return None
    retired: dict[str, Any] = mosaic_json(
        "federation", "connection", "retire", str(connection_id), gateway=b
    )
    return retired


class Blackhole:
    """A TCP port that accepts connections and never says a word (a hung peer)."""

    def __init__(self, host: str) -> None:
        self._server = socket.create_server((host, 0), backlog=128)
        self.host = host
        self.port = self._server.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def _accept(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)  # held open, never read, never answered

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.close()
        self._server.close()


def closed_port_url(host: str) -> str:
    """An https URL on a port nothing listens on (connection refused)."""
    with socket.create_server((host, 0)) as probe:
        port = probe.getsockname()[1]
    return f"https://{host}:{port}"
