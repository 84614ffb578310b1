"""In-process grants app on a fresh, migrated Postgres database, plus direct SQL to check what
the API did (or did not) change."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from fastapi import FastAPI
from psycopg import sql

from fedcore import pki
from fedcore.tokens import hash_token, new_token
from grants.settings import Settings
from tests.support.secrets import random_secret


def sync_url(db_url: str) -> str:
    return db_url.replace("postgresql+psycopg://", "postgresql://")


def make_settings(db_url: str, ca_bundle_path: Path | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "db": {"url": db_url, "startup_wait_seconds": 0, "connect_timeout_seconds": 2},
        "secrets": {
            "gateway_secret": random_secret(),
            "proxy_secret": random_secret(),
            "service_token": random_secret(),
        },
        "public_url": "https://gateway-a.test:8443",
        "ca_bundle_path": str(ca_bundle_path) if ca_bundle_path else "",
        # Nothing listens here: a test that needs the broker injects a transport.
        "ca_broker_url": "http://127.0.0.1:9",
        "ca_broker_timeout_seconds": 2,
    }
    values.update(overrides)
    return Settings(**values)


def write_bundle(hierarchy: pki.CaHierarchy, directory: Path) -> Path:
    path = directory / "ca.pem"
    path.write_text(pki.cert_pem(hierarchy.root_cert) + pki.cert_pem(hierarchy.intermediate_cert))
    return path


@dataclass
class Db:
    """Direct SQL against the test database (psycopg, autocommit)."""

    url: str

    def rows(self, query: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        with psycopg.connect(sync_url(self.url), autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return list(cursor.fetchall()) if cursor.description else []

    def one(self, query: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        found = self.rows(query, params)
        assert len(found) == 1, found
        return found[0]

    def execute(self, query: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> None:
        self.rows(query, params)

    def count(self, table: str) -> int:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        with psycopg.connect(sync_url(self.url), autocommit=True) as conn:
            row = conn.execute(query).fetchone()
        assert row is not None
        return int(row[0])

    def snapshot(self, table: str, row_id: uuid.UUID | str) -> dict[str, Any]:
        """The whole row, to compare before and after a refused request."""
        query = sql.SQL("SELECT * FROM {} WHERE id = %s").format(sql.Identifier(table))
        with psycopg.connect(sync_url(self.url), autocommit=True) as conn:
            cursor = conn.execute(query, (row_id,))
            row = cursor.fetchone()
            assert row is not None
            assert cursor.description is not None
            return dict(zip([c.name for c in cursor.description], row, strict=True))

    def audit(self) -> list[dict[str, Any]]:
        with psycopg.connect(sync_url(self.url), autocommit=True) as conn:
            cursor = conn.execute("SELECT * FROM federation_audit_log ORDER BY id")
            assert cursor.description is not None
            names = [c.name for c in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def insert_token(self, role: str, user_id: uuid.UUID | None = None) -> tuple[str, uuid.UUID]:
        token = new_token()
        token_id = uuid.uuid4()
        self.execute(
            "INSERT INTO admin_tokens (id, token_hash, label, role, user_id, revoked) "
            "VALUES (%s, %s, 'test', %s, %s, false)",
            (token_id, hash_token(token), role, user_id),
        )
        return token, token_id


@dataclass
class Harness:
    app: FastAPI
    client: httpx.AsyncClient
    db: Db
    settings: Settings
    admin_token: str
    admin_token_id: uuid.UUID
    ca: pki.CaHierarchy

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin_token}"}

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.auth(), **kwargs.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = await self.call(method, path, **kwargs)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    async def user(self, username: str | None = None) -> dict[str, Any]:
        name = username or f"user-{uuid.uuid4().hex[:8]}"
        created: dict[str, Any] = await self.ok(
            "POST", "/api/admin/users", 201, json={"username": name}
        )
        return created

    async def team(self, name: str | None = None) -> dict[str, Any]:
        created: dict[str, Any] = await self.ok(
            "POST", "/api/admin/teams", 201, json={"name": name or f"team-{uuid.uuid4().hex[:8]}"}
        )
        return created

    async def member(self, team_id: str, user_id: str) -> None:
        await self.ok("POST", f"/api/admin/teams/{team_id}/members", 201, json={"user_id": user_id})

    async def peer(self, name: str | None = None) -> dict[str, Any]:
        created: dict[str, Any] = await self.ok(
            "POST",
            "/api/admin/federation/peers",
            201,
            json={"name": name or f"peer-{uuid.uuid4().hex[:8]}"},
        )
        return created

    async def grant(
        self,
        user_id: str | None = None,
        peer_id: str | None = None,
        scope: dict[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        body = {
            "subject_user_id": user_id or (await self.user())["id"],
            "peer_id": peer_id or (await self.peer())["id"],
            "scope": scope or {"resources": ["tasks", "notes"]},
            **extra,
        }
        created: dict[str, Any] = await self.ok(
            "POST", "/api/admin/federation/grants", 201, json=body
        )
        return created

    async def token(self, grant_id: str, **body: Any) -> dict[str, Any]:
        issued: dict[str, Any] = await self.ok(
            "POST", f"/api/admin/federation/grants/{grant_id}/tokens", 201, json=body
        )
        return issued


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code, body
    return body["error"]  # type: ignore[no-any-return]
