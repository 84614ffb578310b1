"""Enrollment tokens (POST /api/admin/federation/grants/{id}/tokens): 32 random bytes as hex,
only the SHA-256 stored, TTL default and maximum 900 s, only for a pending grant, peer must
match, the URL carries the CA pin."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from fedcore import pki
from grants.app import create_app
from tests.integration.grants.harness import Db, Harness, assert_error, make_settings
from tests.support.apps import running

GRANTS = "/api/admin/federation/grants"


def _tokens_url(grant: dict[str, Any]) -> str:
    return f"{GRANTS}/{grant['id']}/tokens"


def _token_rows(harness: Harness) -> list[dict[str, Any]]:
    rows = harness.db.rows(
        "SELECT id, token_hash, grant_id, peer_id, expires_at, used_at, revoked_at, created_at "
        "FROM federation_enrollment_tokens ORDER BY created_at, id"
    )
    names = [
        "id",
        "token_hash",
        "grant_id",
        "peer_id",
        "expires_at",
        "used_at",
        "revoked_at",
        "created_at",
    ]
    return [dict(zip(names, row, strict=True)) for row in rows]


async def test_the_table_holds_the_sha256_only(harness: Harness) -> None:
    grant = await harness.grant()
    issued = await harness.token(grant["id"])
    token = issued["token"]
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    [row] = _token_rows(harness)
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert row["id"] == uuid.UUID(issued["token_id"])
    assert row["grant_id"] == uuid.UUID(grant["id"])
    assert row["peer_id"] == uuid.UUID(grant["peer_id"])
    assert (row["used_at"], row["revoked_at"]) == (None, None)
    # The clear token is in no column of any row of the table, nor in the audit log.
    everything = repr(harness.db.rows("SELECT * FROM federation_enrollment_tokens"))
    everything += repr(harness.db.rows("SELECT * FROM federation_audit_log"))
    assert token not in everything
    assert token[:16] not in everything


async def test_tokens_are_distinct(harness: Harness) -> None:
    grant = await harness.grant()
    tokens = {(await harness.token(grant["id"]))["token"] for _ in range(5)}
    assert len(tokens) == 5


async def test_url_has_the_public_enrollment_path_and_the_ca_pin(harness: Harness) -> None:
    grant = await harness.grant()
    issued = await harness.token(grant["id"])
    root_der = harness.ca.root_cert.public_bytes(serialization.Encoding.DER)
    pin = hashlib.sha256(root_der).hexdigest()
    assert issued["ca_fingerprint_sha256"] == pin
    assert issued["enrollment_url"] == (
        f"https://gateway-a.test:8443/api/federation/v1/enrollment/{issued['token']}#ca_fp={pin}"
    )


async def test_default_ttl_is_900_seconds_and_a_shorter_one_is_honoured(harness: Harness) -> None:
    grant = await harness.grant()
    default = await harness.token(grant["id"])
    short = await harness.token(grant["id"], ttl_seconds=60)
    rows = _token_rows(harness)
    lifetimes = [(r["expires_at"] - r["created_at"]).total_seconds() for r in rows]
    assert lifetimes[0] == pytest.approx(900, abs=5)
    assert lifetimes[1] == pytest.approx(60, abs=5)
    assert datetime.fromisoformat(default["expires_at"]) == rows[0]["expires_at"]
    assert datetime.fromisoformat(short["expires_at"]) == rows[1]["expires_at"]


@pytest.mark.parametrize("ttl", [901, 3600, 0, -1, "900", 900.5, True])
async def test_ttl_outside_1_to_900_is_422_and_stores_nothing(harness: Harness, ttl: Any) -> None:
    grant = await harness.grant()
    response = await harness.call("POST", _tokens_url(grant), json={"ttl_seconds": ttl})
    error = assert_error(response, 422, "validation_error")
    if ttl == 901:
        assert error["fields"][0]["loc"] == ["body", "ttl_seconds"]
    assert harness.db.count("federation_enrollment_tokens") == 0


@pytest.mark.parametrize("status", ["active", "revoked", "expired"])
async def test_a_token_for_a_non_pending_grant_is_409(harness: Harness, status: str) -> None:
    grant = await harness.grant()
    harness.db.execute(
        "UPDATE federation_grants SET status = %s WHERE id = %s", (status, grant["id"])
    )
    before = harness.db.snapshot("federation_grants", grant["id"])
    assert_error(await harness.call("POST", _tokens_url(grant), json={}), 409, "grant_not_pending")
    assert harness.db.count("federation_enrollment_tokens") == 0
    assert harness.db.snapshot("federation_grants", grant["id"]) == before
    denied = [r for r in harness.db.audit() if r["action"] == "grant.token"]
    assert [(r["outcome"], r["reason_code"]) for r in denied] == [("denied", "grant_not_pending")]


async def test_a_token_for_a_grant_past_its_expiry_is_409(harness: Harness) -> None:
    grant = await harness.grant()
    harness.db.execute(
        "UPDATE federation_grants SET expires_at = now() - interval '1 second' WHERE id = %s",
        (grant["id"],),
    )
    assert_error(await harness.call("POST", _tokens_url(grant), json={}), 409, "grant_not_pending")
    assert harness.db.count("federation_enrollment_tokens") == 0


async def test_peer_mismatch_is_400_and_the_right_peer_is_accepted(harness: Harness) -> None:
    grant = await harness.grant()
    other = await harness.peer()
    response = await harness.call("POST", _tokens_url(grant), json={"peer_id": other["id"]})
    assert_error(response, 400, "peer_mismatch")
    assert harness.db.count("federation_enrollment_tokens") == 0
    issued = await harness.token(grant["id"], peer_id=grant["peer_id"])
    assert issued["peer_id"] == grant["peer_id"]


async def test_unknown_grant_is_404(harness: Harness) -> None:
    response = await harness.call("POST", f"{GRANTS}/{uuid.uuid4()}/tokens", json={})
    assert_error(response, 404, "grant_not_found")


async def test_earlier_tokens_stay_valid_unless_revoke_others(harness: Harness) -> None:
    grant = await harness.grant()
    first = await harness.token(grant["id"])
    used = await harness.token(grant["id"])
    harness.db.execute(
        "UPDATE federation_enrollment_tokens SET used_at = now() WHERE id = %s", (used["token_id"],)
    )
    second = await harness.token(grant["id"])
    assert second["revoked_other_tokens"] == 0
    assert all(r["revoked_at"] is None for r in _token_rows(harness))
    third = await harness.token(grant["id"], revoke_others=True)
    assert third["revoked_other_tokens"] == 2  # first and second; the used one is left alone
    revoked = {str(r["id"]): r["revoked_at"] is not None for r in _token_rows(harness)}
    assert revoked == {
        first["token_id"]: True,
        used["token_id"]: False,
        second["token_id"]: True,
        third["token_id"]: False,
    }


async def test_without_a_configured_bundle_the_url_has_no_pin(migrated_db_url: str) -> None:
    db = Db(migrated_db_url)
    token, _ = db.insert_token("admin")
    headers = {"Authorization": f"Bearer {token}"}
    async with running(create_app(make_settings(migrated_db_url, None))) as client:
        user = (
            await client.post("/api/admin/users", json={"username": "u"}, headers=headers)
        ).json()
        peer = (
            await client.post("/api/admin/federation/peers", json={"name": "p"}, headers=headers)
        ).json()
        body = {
            "subject_user_id": user["id"],
            "peer_id": peer["id"],
            "scope": {"resources": ["tasks"]},
        }
        grant = (await client.post(GRANTS, json=body, headers=headers)).json()
        issued = (await client.post(_tokens_url(grant), json={}, headers=headers)).json()
    assert issued["ca_fingerprint_sha256"] is None
    assert "#" not in issued["enrollment_url"]


async def test_a_configured_but_missing_bundle_is_503_and_stores_nothing(
    migrated_db_url: str, tmp_path: Path
) -> None:
    db = Db(migrated_db_url)
    token, _ = db.insert_token("admin")
    headers = {"Authorization": f"Bearer {token}"}
    settings = make_settings(migrated_db_url, tmp_path / "not-yet-written.pem")
    async with running(create_app(settings)) as client:
        user = (
            await client.post("/api/admin/users", json={"username": "u"}, headers=headers)
        ).json()
        peer = (
            await client.post("/api/admin/federation/peers", json={"name": "p"}, headers=headers)
        ).json()
        body = {
            "subject_user_id": user["id"],
            "peer_id": peer["id"],
            "scope": {"resources": ["tasks"]},
        }
        grant = (await client.post(GRANTS, json=body, headers=headers)).json()
        response = await client.post(_tokens_url(grant), json={}, headers=headers)
    assert_error(response, 503, "ca_bundle_unavailable")
    assert db.count("federation_enrollment_tokens") == 0


def test_the_ttl_settings_cannot_exceed_900_seconds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="enrollment_token_ttl_default"):
        make_settings("postgresql+psycopg://u:p@h/d", None, enrollment_token_ttl_default=901)
    assert make_settings("postgresql+psycopg://u:p@h/d", None, enrollment_token_ttl_default=300)


def test_pin_uses_the_root_even_when_the_bundle_lists_the_intermediate_first(
    gateway_ca: pki.CaHierarchy,
) -> None:
    reordered = pki.cert_pem(gateway_ca.intermediate_cert) + pki.cert_pem(gateway_ca.root_cert)
    assert pki.bundle_root_fingerprint(reordered) == pki.fingerprint_sha256(gateway_ca.root_cert)
    assert pki.bundle_root_fingerprint(reordered) != pki.fingerprint_sha256(
        gateway_ca.intermediate_cert
    )
