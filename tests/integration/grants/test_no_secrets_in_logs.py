"""No admin token and no enrollment token reaches a log line: a whole admin session (good,
bad and user tokens, token issuance, revocation, refusals) runs with every logger at DEBUG, and
each captured record is checked raw (message, arguments, extra fields) and as the JSON line the
services write."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest

from fedcore import pki
from fedcore.jsonlog import JsonFormatter
from grants.app import create_app
from tests.integration.grants.harness import Db, make_settings
from tests.support.apps import running


def _texts(record: logging.LogRecord, formatter: JsonFormatter) -> list[str]:
    # Raw first: the JSON formatter scrubs 64-hex strings, so checking only its output would
    # hide a token the code logged.
    raw = [record.getMessage(), repr(record.args)]
    raw += [repr(value) for value in vars(record).values()]
    return [*raw, formatter.format(record)]


def _leaks(records: Iterable[logging.LogRecord], secrets: list[str]) -> list[str]:
    formatter = JsonFormatter("grants")
    found = []
    for record in records:
        for text in _texts(record, formatter):
            for secret in secrets:
                # At most an 8-character prefix may ever appear (fedcore.tokens.log_prefix).
                for needle in (secret, secret[:9], secret[-12:], secret[20:40]):
                    if needle in text:
                        found.append(f"{record.name}: {needle!r}")
    return found


def test_the_leak_check_finds_a_token_even_where_the_formatter_would_scrub_it() -> None:
    token = "f" * 24 + "0123456789abcdef" * 2 + "e" * 8
    record = logging.LogRecord("x", logging.INFO, "x", 1, "issued", None, None)
    record.token = token
    assert "…[redacted]" in JsonFormatter("x").format(record)
    assert _leaks([record], [token])
    assert not _leaks([record], ["9" * 64])


async def test_no_token_appears_in_any_log_line(
    migrated_db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    db = Db(migrated_db_url)
    admin_token, _ = db.insert_token("admin")
    bundle = tmp_path / "ca.pem"
    hierarchy = pki.generate_ca_hierarchy("log-test")
    bundle.write_text(pki.cert_pem(hierarchy.root_cert))
    app = create_app(make_settings(migrated_db_url, bundle))
    secrets = [admin_token]
    admin = {"Authorization": f"Bearer {admin_token}"}
    async with running(app) as client:
        user = (await client.post("/api/admin/users", json={"username": "u"}, headers=admin)).json()
        user_token, _ = db.insert_token("user", uuid.UUID(user["id"]))
        unknown_token = "cd" * 32
        secrets += [user_token, unknown_token]
        peer = (
            await client.post("/api/admin/federation/peers", json={"name": "p"}, headers=admin)
        ).json()
        grant = (
            await client.post(
                "/api/admin/federation/grants",
                json={
                    "subject_user_id": user["id"],
                    "peer_id": peer["id"],
                    "scope": {"resources": ["tasks"]},
                },
                headers=admin,
            )
        ).json()
        tokens_url = f"/api/admin/federation/grants/{grant['id']}/tokens"
        for body in ({}, {"ttl_seconds": 60}, {"revoke_others": True}):
            issued = await client.post(tokens_url, json=body, headers=admin)
            assert issued.status_code == 201
            secrets.append(issued.json()["token"])
        refused = [
            await client.get(
                "/api/admin/federation/peers", headers={"Authorization": f"Bearer {unknown_token}"}
            ),
            await client.get(
                "/api/admin/federation/peers", headers={"Authorization": f"Bearer {user_token}"}
            ),
            await client.post(tokens_url, json={"ttl_seconds": 901}, headers=admin),
            await client.post(tokens_url, json={"peer_id": str(uuid.uuid4())}, headers=admin),
        ]
        assert [r.status_code for r in refused] == [401, 403, 422, 400]
        revoked = await client.patch(
            f"/api/admin/federation/grants/{grant['id']}/revoke",
            json={"reason": "done"},
            headers=admin,
        )
        assert revoked.status_code == 200
        assert (await client.post(tokens_url, json={}, headers=admin)).status_code == 409

    # The run did log (otherwise "no token in the logs" would prove nothing).
    issued_lines = [r for r in caplog.records if r.getMessage() == "enrollment token issued"]
    assert len(issued_lines) == 3
    assert all(getattr(r, "token_id", None) for r in issued_lines)
    assert len(caplog.records) > 10
    assert len(secrets) == 6
    assert _leaks(caplog.records, secrets) == []
