"""Enrollment through nginx's public listener of a launcher-started gateway, with the real CA.

Each refusal asserts its code and that nothing changed: the token stays unused, the grant stays
as it was, no certificate is recorded.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enrollment.app import create_app as create_enrollment_app
from enrollment.settings import Settings as EnrollmentSettings
from fedcore import pki
from fedcore.csr import make_csr
from fedcore.federation_oids import (
    GRANT_ID_OID,
    encode_uuid_utf8string,
    extract_federation_identity,
)
from fedcore.models import GrantStatus
from tests.support.apps import running
from tests.support.db import fetch_all, fetch_one
from tests.support.factories import GrantFixture, create_enrollment_token, create_grant_fixture
from tests.support.net import host
from tests.support.secrets import random_secret
from tests.support.stack import Gateway

# Every token this module uses; the last test checks none of them reached a log.
USED_TOKENS: list[str] = []


async def _fixture(gw: Gateway, ttl: timedelta = timedelta(minutes=15)) -> tuple[GrantFixture, str]:
    fx = await create_grant_fixture(gw.database_url)
    token = await create_enrollment_token(gw.database_url, fx, ttl)
    USED_TOKENS.append(token)
    return fx, token


def _csr() -> str:
    return make_csr(ec.generate_private_key(ec.SECP256R1()), "gateway-b")


async def _redeem(gw: Gateway, token: str, csr_pem: str | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.public_url, verify=gw.tls_context(), timeout=30) as c:
        return await c.post(
            f"/api/federation/v1/enrollment/{token}", json={"csr_pem": csr_pem or _csr()}
        )


def _state(gw: Gateway, fx: GrantFixture) -> dict[str, Any]:
    grant_status, activated = fetch_one(
        gw.database_url,
        "SELECT status::text, activated_at FROM federation_grants WHERE id = %s",
        (fx.grant_id,),
    )
    used = fetch_all(
        gw.database_url,
        "SELECT used_at FROM federation_enrollment_tokens WHERE grant_id = %s",
        (fx.grant_id,),
    )
    certs = fetch_all(
        gw.database_url,
        "SELECT serial, revoked_at FROM federation_certificates WHERE grant_id = %s",
        (fx.grant_id,),
    )
    peer_state, serial = fetch_one(
        gw.database_url,
        "SELECT state::text, cert_serial FROM federation_peers WHERE id = %s",
        (fx.peer_id,),
    )
    return {
        "grant": grant_status,
        "activated": activated is not None,
        "tokens_used": [u is not None for (u,) in used],
        "live_certs": [s for s, revoked in certs if revoked is None],
        "peer": (peer_state, serial),
    }


def _audit(gw: Gateway, fx: GrantFixture) -> list[tuple[str, str | None]]:
    return [
        (outcome, reason)
        for outcome, reason in fetch_all(
            gw.database_url,
            "SELECT outcome::text, reason_code FROM federation_audit_log "
            "WHERE grant_id = %s AND action = 'enrollment.redeem' ORDER BY id",
            (fx.grant_id,),
        )
    ]


async def test_redemption_activates_grant_and_peer_and_returns_the_certificate(
    gateway_a: Gateway,
) -> None:
    fx, token = await _fixture(gateway_a)
    key = ec.generate_private_key(ec.SECP256R1())
    response = await _redeem(gateway_a, token, make_csr(key, "gateway-b"))

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {
        "cert_pem",
        "cert_chain_pem",
        "ca_bundle_pem",
        "grant_id",
        "subject_user_id",
        "peer_id",
        "not_after",
        "endpoint",
    }
    cert = pki.load_pem_chain(body["cert_pem"])[0]
    assert cert.public_key() == key.public_key()
    identity = extract_federation_identity(cert)
    assert (identity.grant_id, identity.subject_user_id) == (fx.grant_id, fx.user_id)
    assert (body["grant_id"], body["peer_id"]) == (str(fx.grant_id), str(fx.peer_id))
    assert body["endpoint"] == gateway_a.public_url
    chain = pki.load_pem_chain(body["cert_chain_pem"])
    pki.verify_client_certificate(cert, chain[1:], pki.load_pem_chain(body["ca_bundle_pem"])[:1])

    state = _state(gateway_a, fx)
    assert state["grant"] == "active"
    assert state["activated"] is True
    assert state["tokens_used"] == [True]
    assert state["live_certs"] == [pki.serial_hex(cert)]
    assert state["peer"] == ("active", pki.serial_hex(cert))
    assert _audit(gateway_a, fx) == [("allowed", None)]


async def test_replay_is_refused_and_changes_nothing(gateway_a: Gateway) -> None:
    fx, token = await _fixture(gateway_a)
    assert (await _redeem(gateway_a, token)).status_code == 201
    before = _state(gateway_a, fx)

    replay = await _redeem(gateway_a, token)
    assert replay.status_code == 410
    assert replay.json()["error"]["code"] == "token_used"
    assert _state(gateway_a, fx) == before
    assert _audit(gateway_a, fx) == [("allowed", None), ("denied", "token_used")]


async def test_expired_token_is_refused_and_stays_unused(gateway_a: Gateway) -> None:
    fx, token = await _fixture(gateway_a, ttl=timedelta(seconds=-1))
    response = await _redeem(gateway_a, token)
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "token_expired"
    state = _state(gateway_a, fx)
    assert state["tokens_used"] == [False]
    assert state["grant"] == "pending"
    assert state["live_certs"] == []
    assert _audit(gateway_a, fx) == [("denied", "token_expired")]


@pytest.mark.parametrize("token", ["0" * 64, "not-a-token", "A" * 64, "%E2%80%AEevil%0AX"])
async def test_unknown_token_is_404(gateway_a: Gateway, token: str) -> None:
    response = await _redeem(gateway_a, token)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "token_unknown"
    actors = {
        actor
        for (actor,) in fetch_all(
            gateway_a.database_url,
            "SELECT actor_id FROM federation_audit_log WHERE action = 'enrollment.redeem' "
            "AND reason_code = 'token_unknown'",
        )
    }
    # Only a well-formed token's 8-character prefix is stored, never the caller's raw text.
    assert actors <= {"token:00000000", "token:malformed"}


async def test_grant_revoked_before_redemption_is_409_and_token_stays_unused(
    gateway_a: Gateway,
) -> None:
    fx, token = await _fixture(gateway_a)
    fetch_all(
        gateway_a.database_url,
        "UPDATE federation_grants SET status = 'revoked', revoked_at = now() WHERE id = %s "
        "RETURNING id",
        (fx.grant_id,),
    )
    response = await _redeem(gateway_a, token)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "grant_not_pending"
    state = _state(gateway_a, fx)
    assert state["tokens_used"] == [False]
    assert state["grant"] == GrantStatus.REVOKED.value
    assert state["live_certs"] == []
    assert state["peer"] == ("pending", None)


def _spoofing_csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-b")]))
        .add_extension(
            x509.UnrecognizedExtension(GRANT_ID_OID, encode_uuid_utf8string(uuid.uuid4())),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _p384_csr() -> str:
    key = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-b")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize("make_bad_csr", [_spoofing_csr, _p384_csr], ids=["oid-spoof", "p384"])
async def test_bad_csr_is_refused_through_the_real_endpoint(
    gateway_a: Gateway, make_bad_csr: Any
) -> None:
    fx, token = await _fixture(gateway_a)
    response = await _redeem(gateway_a, token, make_bad_csr())
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_csr"
    state = _state(gateway_a, fx)
    assert state["tokens_used"] == [False]
    assert state["grant"] == "pending"
    assert state["live_certs"] == []
    assert (await _redeem(gateway_a, token)).status_code == 201  # the token was not burnt


async def test_concurrent_redemptions_of_one_token_yield_exactly_one_certificate(
    gateway_a: Gateway,
) -> None:
    fx, token = await _fixture(gateway_a)
    responses = await asyncio.gather(*(_redeem(gateway_a, token) for _ in range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 1, statuses
    losers = [r.json()["error"]["code"] for r in responses if r.status_code != 201]
    # A redemption meeting another in flight fails at once (the peer's lock, NOWAIT: 503).
    assert set(losers) <= {"token_used", "grant_not_pending", "database_busy"}, losers
    state = _state(gateway_a, fx)
    assert len(state["live_certs"]) == 1
    assert state["grant"] == "active"
    assert state["tokens_used"] == [True]
    audit = _audit(gateway_a, fx)
    assert len(audit) == 20
    assert audit.count(("allowed", None)) == 1


async def test_ca_down_during_redemption_leaves_the_token_redeemable(gateway_a: Gateway) -> None:
    """An enrollment service whose CA is unreachable (same database, broker URL on a closed
    port) answers 503 and changes nothing; the real one then redeems the same token."""
    fx, token = await _fixture(gateway_a)
    settings = EnrollmentSettings(
        db={"url": gateway_a.database_url},
        secrets={
            "gateway_secret": random_secret(),
            "proxy_secret": random_secret(),
            "service_token": gateway_a.service_token,
        },
        ca_broker_url=f"http://{gateway_a.state['host']}:9",
        ca_timeout_seconds=2,
    )
    async with running(create_enrollment_app(settings)) as client:
        down = await client.post(f"/api/federation/v1/enrollment/{token}", json={"csr_pem": _csr()})
    assert down.status_code == 503
    assert down.json()["error"]["code"] == "ca_unavailable"
    state = _state(gateway_a, fx)
    assert state["tokens_used"] == [False]
    assert state["grant"] == "pending"
    assert state["live_certs"] == []
    assert _audit(gateway_a, fx) == [("error", "ca_unavailable")]

    again = await _redeem(gateway_a, token)
    assert again.status_code == 201
    assert _state(gateway_a, fx)["grant"] == "active"


async def test_redemption_racing_a_peer_revocation_ends_consistent(gateway_a: Gateway) -> None:
    """Enrollment (peer → grant → token locks, then a call to the broker) racing the admin's
    peer revocation (peer → grants → tokens): both finish with a clean answer — no 500, no lock
    cycle — and the end state is consistent: a revoked peer has no live certificate and no
    active grant."""
    for _ in range(5):
        fx, token = await _fixture(gateway_a)
        async with httpx.AsyncClient(base_url=gateway_a.admin_url, timeout=30) as admin:
            redeemed, revoked = await asyncio.gather(
                _redeem(gateway_a, token),
                admin.patch(
                    f"/api/admin/federation/peers/{fx.peer_id}/state",
                    json={"state": "revoked", "reason": "race"},
                    headers={"Authorization": f"Bearer {gateway_a.admin_token}"},
                ),
            )
        assert redeemed.status_code in (201, 409, 410, 503), redeemed.text
        assert revoked.status_code in (200, 409, 503), revoked.text
        if redeemed.status_code != 201:
            assert redeemed.json()["error"]["code"] in {
                "grant_not_pending",
                "peer_not_enrollable",
                "database_busy",
                "token_revoked",
            }
        state = _state(gateway_a, fx)
        if state["peer"][0] == "revoked":
            assert state["grant"] != "active"
            assert state["live_certs"] == []


async def test_nginx_rate_limits_enrollment_per_client_ip(gateway_a: Gateway) -> None:
    # From a client address of its own: the limit is per IP, and the other tests' enrollments
    # (from the usual address) must not find the bucket emptied by this one.
    transport = httpx.AsyncHTTPTransport(verify=gateway_a.tls_context(), local_address=host(99))
    async with httpx.AsyncClient(
        base_url=gateway_a.public_url, transport=transport, timeout=30
    ) as client:
        responses = await asyncio.gather(
            *(
                client.post(f"/api/federation/v1/enrollment/{'1' * 64}", json={"csr_pem": "x"})
                for _ in range(120)
            )
        )
    limited = [r for r in responses if r.status_code == 429]
    assert limited, "no request was rate limited"
    assert limited[0].json()["error"]["code"] == "rate_limited"
    assert limited[0].headers["retry-after"] == "1"
    # ... and a client from another address is not limited by it.
    assert (await _redeem(gateway_a, "2" * 64)).status_code == 404


def test_no_token_or_private_key_reached_any_log(gateway_a: Gateway) -> None:
    """Runs last in this module: scan every service and nginx log of the gateway."""
    assert USED_TOKENS
    text = "".join(
        path.read_text(errors="replace") for path in gateway_a.spec.log_dir.rglob("*.log")
    )
    assert "enrollment" in text  # the logs really cover the enrollment traffic
    for token in USED_TOKENS:
        assert token not in text
        assert token[8:] not in text
    assert "PRIVATE KEY" not in text
