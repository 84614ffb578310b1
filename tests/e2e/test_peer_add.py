"""`mosaic federation peer add` on gateway B against gateway A: both launcher-started, real
nginx, real CA. Success leaves an active grant on A and an active, sealed connection on B; every
failure leaves nothing half-made on B and the token unused on A."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from tests.support.cli import mosaic, mosaic_json, refused
from tests.support.db import fetch_all, fetch_one
from tests.support.stack import Gateway


def _grant_with_token(a: Gateway, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    suffix = uuid.uuid4().hex[:8]
    peer = mosaic_json("federation", "peer", "create", f"gw-b-{suffix}", gateway=a)
    user = mosaic_json("user", "create", f"alice-{suffix}", gateway=a)
    scope = tmp_path / "scope.json"
    scope.write_text(json.dumps({"resources": ["tasks"], "max_rows_per_query": 10}))
    grant = mosaic_json(
        "federation",
        "grant",
        "create",
        "--user",
        user["id"],
        "--peer",
        peer["id"],
        "--scope",
        str(scope),
        gateway=a,
    )
    token = mosaic_json("federation", "grant", "token", grant["id"], gateway=a)
    return grant, token


def _connections(b: Gateway) -> list[tuple[Any, ...]]:
    return fetch_all(
        b.database_url,
        "SELECT name, state::text, remote_grant_id, sealed_private_key, cert_pem "
        "FROM federation_connections ORDER BY created_at",
    )


def _grant_state(a: Gateway, grant_id: str) -> tuple[str, int]:
    status, used = fetch_one(
        a.database_url,
        "SELECT g.status::text, count(t.used_at) FROM federation_grants g "
        "LEFT JOIN federation_enrollment_tokens t ON t.grant_id = g.id "
        "WHERE g.id = %s GROUP BY g.status",
        (grant_id,),
    )
    return str(status), int(used)


def test_peer_add_enrolls_b_at_a(gateway_a: Gateway, gateway_b: Gateway, tmp_path: Path) -> None:
    grant, token = _grant_with_token(gateway_a, tmp_path)
    name = f"to-a-{uuid.uuid4().hex[:6]}"
    connection = mosaic_json(
        "federation", "peer", "add", token["enrollment_url"], "--name", name, gateway=gateway_b
    )
    assert connection["state"] == "active"
    assert connection["remote_grant_id"] == grant["id"]
    assert connection["remote_subject_user_id"] == grant["subject_user_id"]

    assert _grant_state(gateway_a, grant["id"]) == ("active", 1)
    [row] = [r for r in _connections(gateway_b) if r[0] == name]
    _, state, remote_grant, sealed, cert_pem = row
    assert state == "active"
    assert str(remote_grant) == grant["id"]
    raw = bytes(sealed)
    assert raw.startswith(b"MSL1")  # sealed blob, not a key
    assert b"PRIVATE KEY" not in raw
    assert "BEGIN CERTIFICATE" in cert_pem


def test_a_wrong_pin_is_refused_and_leaves_nothing(
    gateway_a: Gateway, gateway_b: Gateway, tmp_path: Path
) -> None:
    grant, token = _grant_with_token(gateway_a, tmp_path)
    before = _connections(gateway_b)
    url = token["enrollment_url"].split("#")[0] + "#ca_fp=" + "0" * 64
    refused(mosaic("federation", "peer", "add", url, gateway=gateway_b), "ca_pin_mismatch")
    assert _connections(gateway_b) == before
    assert _grant_state(gateway_a, grant["id"]) == ("pending", 0)


def test_no_pin_means_no_enrollment(gateway_a: Gateway, gateway_b: Gateway, tmp_path: Path) -> None:
    grant, token = _grant_with_token(gateway_a, tmp_path)
    before = _connections(gateway_b)
    url = token["enrollment_url"].split("#")[0]
    result = mosaic("federation", "peer", "add", url, gateway=gateway_b)
    assert result.returncode == 2
    assert "trust on first use" in result.stderr
    assert _connections(gateway_b) == before
    assert _grant_state(gateway_a, grant["id"]) == ("pending", 0)


def test_the_url_can_come_from_stdin(
    gateway_a: Gateway, gateway_b: Gateway, tmp_path: Path
) -> None:
    import subprocess

    from tests.support.cli import MOSAIC, _env

    grant, token = _grant_with_token(gateway_a, tmp_path)
    result = subprocess.run(
        [
            str(MOSAIC),
            "federation",
            "peer",
            "add",
            "-",
            "--name",
            f"stdin-{uuid.uuid4().hex[:6]}",
            "--json",
        ],
        input=token["enrollment_url"] + "\n",
        env=_env(gateway_b),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "active"
    assert _grant_state(gateway_a, grant["id"]) == ("active", 1)


def test_ca_file_works_without_a_pin(
    gateway_a: Gateway, gateway_b: Gateway, tmp_path: Path
) -> None:
    grant, token = _grant_with_token(gateway_a, tmp_path)
    url = token["enrollment_url"].split("#")[0]
    connection = mosaic_json(
        "federation",
        "peer",
        "add",
        url,
        "--ca-file",
        gateway_a.ca_bundle,
        "--name",
        f"cafile-{uuid.uuid4().hex[:6]}",
        gateway=gateway_b,
    )
    assert connection["state"] == "active"
    assert _grant_state(gateway_a, grant["id"]) == ("active", 1)


def test_a_used_token_fails_cleanly_on_b(
    gateway_a: Gateway, gateway_b: Gateway, tmp_path: Path
) -> None:
    _, token = _grant_with_token(gateway_a, tmp_path)
    first = mosaic(
        "federation",
        "peer",
        "add",
        token["enrollment_url"],
        "--name",
        f"once-{uuid.uuid4().hex[:6]}",
        gateway=gateway_b,
    )
    assert first.returncode == 0, first.stderr
    before = _connections(gateway_b)
    again = mosaic(
        "federation",
        "peer",
        "add",
        token["enrollment_url"],
        "--name",
        f"twice-{uuid.uuid4().hex[:6]}",
        gateway=gateway_b,
    )
    refused(again, "token_used")
    assert _connections(gateway_b) == before  # the pending connection was removed


def test_a_bundle_with_a_foreign_root_behind_the_genuine_one_is_refused(
    gateway_a: Gateway, gateway_b: Gateway, tmp_path: Path
) -> None:
    """The attack from the review: A's real root first (so a first-root pin check passes), an
    attacker's root behind it. The pin must vouch for the whole trust set."""
    from fedcore import pki

    grant, token = _grant_with_token(gateway_a, tmp_path)
    before = _connections(gateway_b)
    poisoned = tmp_path / "poisoned.pem"
    foreign = pki.generate_ca_hierarchy("attacker")
    poisoned.write_text(Path(gateway_a.ca_bundle).read_text() + pki.cert_pem(foreign.root_cert))
    result = mosaic(
        "federation",
        "peer",
        "add",
        token["enrollment_url"],
        "--ca-file",
        str(poisoned),
        gateway=gateway_b,
    )
    refused(result, "ca_pin_mismatch")
    assert _connections(gateway_b) == before
    assert _grant_state(gateway_a, grant["id"]) == ("pending", 0)


def test_peer_add_retries_while_a_holds_the_peer_busy(
    gateway_a: Gateway, gateway_b: Gateway, tmp_path: Path
) -> None:
    """A's enrollment never queues for the peer's row (NOWAIT): while something else on A holds
    it (here the test, as a renewal or an admin change would), A answers 503 database_busy with
    Retry-After, and `peer add` asks again instead of giving up. The row is let go once A has
    refused (and audited) one attempt."""
    grant, token = _grant_with_token(gateway_a, tmp_path)
    peer_id = fetch_one(
        gateway_a.database_url,
        "SELECT peer_id FROM federation_grants WHERE id = %s",
        (grant["id"],),
    )[0]
    locked = threading.Event()

    def busy_refusals() -> list[tuple[Any, ...]]:
        return fetch_all(
            gateway_a.database_url,
            "SELECT reason_code FROM federation_audit_log "
            "WHERE action = 'enrollment.redeem' AND grant_id = %s AND outcome = 'error'",
            (grant["id"],),
        )

    def hold_the_peer_row_until_a_refusal() -> None:
        url = gateway_a.database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url) as conn:
            conn.execute(
                "SELECT id FROM federation_peers WHERE id = %s FOR NO KEY UPDATE", (peer_id,)
            )
            locked.set()
            deadline = time.monotonic() + 20
            while not busy_refusals() and time.monotonic() < deadline:
                time.sleep(0.05)
            conn.rollback()

    holder = threading.Thread(target=hold_the_peer_row_until_a_refusal)
    holder.start()
    try:
        assert locked.wait(10)
        name = f"to-a-{uuid.uuid4().hex[:6]}"
        connection = mosaic_json(
            "federation", "peer", "add", token["enrollment_url"], "--name", name, gateway=gateway_b
        )
    finally:
        holder.join(30)
    assert connection["state"] == "active"
    assert _grant_state(gateway_a, grant["id"]) == ("active", 1)
    refusals = busy_refusals()
    assert refusals
    assert {code for (code,) in refusals} == {"database_busy"}
