"""Admin bearer-token auth (fedcore.admin_auth) on the grants service: every admin route refuses
a missing, malformed, unknown or revoked token (401) and a user token (403), each with its code,
an audit row, and nothing changed."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from fastapi import APIRouter

from fedcore.admin_auth import CurrentUserOrAdmin
from fedcore.appkit import create_service_app
from grants.app import create_app
from tests.integration.grants.harness import Db, Harness, assert_error, make_settings
from tests.support.apps import running

PEERS = "/api/admin/federation/peers"


def _admin_routes() -> list[tuple[str, str]]:
    """Every (method, path) of the admin API, from the app's own OpenAPI document."""
    app = create_app(make_settings("postgresql+psycopg://u:p@127.0.0.1:9/x", None))
    found: list[tuple[str, str]] = []
    for template, operations in app.openapi()["paths"].items():
        if template.startswith("/api/admin"):
            path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), template)
            found.extend((method.upper(), path) for method in sorted(operations))
    return found


ADMIN_ROUTES = _admin_routes()


def test_the_route_inventory_is_not_empty() -> None:
    # Guards the parametrised tests below against silently testing nothing.
    assert len(ADMIN_ROUTES) >= 20
    assert ("POST", PEERS) in ADMIN_ROUTES


def _denied_auth_rows(harness: Harness) -> list[dict[str, Any]]:
    return [row for row in harness.db.audit() if row["action"] == "admin.authenticate"]


async def _refused_peer_create(
    harness: Harness, headers: dict[str, str], status: int, code: str
) -> dict[str, Any]:
    before = harness.db.count("federation_peers")
    response = await harness.client.post(PEERS, json={"name": "never-created"}, headers=headers)
    error = assert_error(response, status, code)
    assert harness.db.count("federation_peers") == before
    rows = _denied_auth_rows(harness)
    assert len(rows) == 1
    assert rows[0]["outcome"] == "denied"
    assert rows[0]["reason_code"] == code
    return {"error": error, "audit": rows[0], "response": response}


async def test_no_token_is_401_admin_token_required(harness: Harness) -> None:
    result = await _refused_peer_create(harness, {}, 401, "admin_token_required")
    assert result["response"].headers["www-authenticate"].startswith("Bearer")
    assert result["audit"]["actor_id"] is None


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "bearer", "Token abc"]
)
async def test_a_non_bearer_or_empty_authorization_is_admin_token_required(
    harness: Harness, header: str
) -> None:
    await _refused_peer_create(harness, {"Authorization": header}, 401, "admin_token_required")


@pytest.mark.parametrize(
    "token",
    ["not-a-token", "A" * 64, "0" * 63, "g" * 64, "' OR '1'='1", "0" * 65],
    ids=["text", "uppercase", "short", "non-hex", "sql", "long"],
)
async def test_a_malformed_token_is_401_admin_token_invalid(harness: Harness, token: str) -> None:
    await _refused_peer_create(harness, harness.auth(token), 401, "admin_token_invalid")


async def test_an_unknown_token_is_401_admin_token_invalid(harness: Harness) -> None:
    unknown = "ab" * 32
    await _refused_peer_create(harness, harness.auth(unknown), 401, "admin_token_invalid")


async def test_a_revoked_token_is_401_admin_token_invalid(harness: Harness) -> None:
    token, token_id = harness.db.insert_token("admin")
    assert (await harness.call("GET", PEERS, headers=harness.auth(token))).status_code == 200
    harness.db.execute("UPDATE admin_tokens SET revoked = true WHERE id = %s", (token_id,))
    await _refused_peer_create(harness, harness.auth(token), 401, "admin_token_invalid")


async def test_a_user_token_on_an_admin_route_is_403_admin_role_required(harness: Harness) -> None:
    user = await harness.user()
    token, token_id = harness.db.insert_token("user", uuid.UUID(user["id"]))
    result = await _refused_peer_create(harness, harness.auth(token), 403, "admin_role_required")
    assert result["audit"]["actor_id"] == str(token_id)


async def test_the_admin_token_works_and_its_id_is_the_audit_actor(harness: Harness) -> None:
    peer = await harness.peer("audited-peer")
    rows = [r for r in harness.db.audit() if r["action"] == "peer.create"]
    assert len(rows) == 1
    assert rows[0]["actor_type"] == "admin_token"
    assert rows[0]["actor_id"] == str(harness.admin_token_id)
    assert rows[0]["peer_id"] == uuid.UUID(peer["id"])


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_every_admin_route_refuses_without_a_token_and_with_a_user_token(
    harness: Harness, method: str, path: str
) -> None:
    user = await harness.user()
    user_token, _ = harness.db.insert_token("user", uuid.UUID(user["id"]))
    counts = {t: harness.db.count(t) for t in ("federation_peers", "federation_grants", "users")}
    body: dict[str, Any] | None = {} if method in {"POST", "PATCH"} else None
    anonymous = await harness.client.request(method, path, json=body)
    assert_error(anonymous, 401, "admin_token_required")
    as_user = await harness.client.request(
        method, path, json=body, headers=harness.auth(user_token)
    )
    assert_error(as_user, 403, "admin_role_required")
    assert {t: harness.db.count(t) for t in counts} == counts


async def test_current_user_or_admin_accepts_both_roles_and_names_the_user(
    migrated_db_url: str,
) -> None:
    router = APIRouter()

    @router.get("/whoami")
    async def whoami(principal: CurrentUserOrAdmin) -> dict[str, Any]:
        return {"role": principal.role.value, "user_id": str(principal.user_id)}

    settings = make_settings(migrated_db_url, None)
    app = create_service_app(title="probe", settings=settings, routers=[router])
    db = Db(migrated_db_url)
    user_id = uuid.uuid4()
    db.execute("INSERT INTO users (id, username, display_name) VALUES (%s, 'u1', '')", (user_id,))
    admin_token, _ = db.insert_token("admin")
    user_token, _ = db.insert_token("user", user_id)
    async with running(app) as client:
        as_admin = await client.get("/whoami", headers={"Authorization": f"Bearer {admin_token}"})
        as_user = await client.get("/whoami", headers={"Authorization": f"Bearer {user_token}"})
        anonymous = await client.get("/whoami")
    assert as_admin.json() == {"role": "admin", "user_id": "None"}
    assert as_user.json() == {"role": "user", "user_id": str(user_id)}
    assert_error(anonymous, 401, "admin_token_required")
