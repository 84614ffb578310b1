"""Every refusal on the verbs' trust path (DESIGN §5 steps 1-7), through the real nginx and with
certificates signed by the gateway's real CA key. Each asserts the status and the error code,
and that the refused request left exactly one denied audit row (or, for nginx's own refusals,
that it never reached the service)."""

from __future__ import annotations

import json
import ssl
import urllib.parse
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcore import pki
from fedcore.federation_oids import encode_uuid_utf8string
from tests.support.custom_certs import custom_client_cert, valid_values, with_duplicate_grant_oid
from tests.support.db import fetch_all
from tests.support.factories import DEFAULT_SCOPE, create_grant_fixture
from tests.support.federation import (
    PeerIdentity,
    enrolled_peer,
    gateway_ca,
    record_certificate,
    write_identity,
)
from tests.support.stack import Gateway
from tests.support.test_pki import issue_client

_enc = encode_uuid_utf8string


def _context(gw: Gateway, cert_chain_pem: str, key: ec.EllipticCurvePrivateKey) -> ssl.SSLContext:
    cert_path, key_path = write_identity(key, cert_chain_pem)
    context = ssl.create_default_context(cafile=gw.ca_bundle)
    context.load_cert_chain(cert_path, key_path)
    return context


async def _capabilities(gw: Gateway, context: ssl.SSLContext | None) -> httpx.Response:
    async with httpx.AsyncClient(verify=context or gw.tls_context(), timeout=15) as client:
        return await client.get(f"{gw.public_url}/api/federation/v1/capabilities")


def _audit_rows(gw: Gateway, serial: str) -> list[tuple[str, str | None]]:
    rows = fetch_all(
        gw.database_url,
        "SELECT outcome::text, reason_code FROM federation_audit_log "
        "WHERE cert_serial = %s AND action LIKE 'verb.%%' ORDER BY id",
        (serial,),
    )
    return [(o, r) for o, r in rows]


def _expect(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


async def _odd_cert(
    gw: Gateway,
    *,
    grant_value: bytes | None,
    subject_value: bytes | None,
    record_for: Any = None,
    **kwargs: Any,
) -> tuple[ssl.SSLContext, str]:
    """A certificate from the gateway's CA with chosen OID values, optionally recorded."""
    ca = await gateway_ca(gw)
    key = ec.generate_private_key(ec.SECP256R1())
    peer_id = record_for.peer_id if record_for else uuid.uuid4()
    cert = custom_client_cert(
        ca, key, peer_id=peer_id, grant_value=grant_value, subject_value=subject_value, **kwargs
    )
    if record_for is not None:
        await record_certificate(gw, cert, record_for.grant_id, record_for.peer_id)
    chain = pki.cert_pem(cert) + pki.cert_pem(ca.intermediate_cert)
    return _context(gw, chain, key), pki.serial_hex(cert)


async def test_no_certificate_is_401_from_nginx(gateway_a: Gateway) -> None:
    _expect(await _capabilities(gateway_a, None), 401, "client_cert_required")


async def test_certificate_from_another_ca_is_401(gateway_a: Gateway) -> None:
    stranger = issue_client(pki.generate_ca_hierarchy("stranger"))
    context = _context(gateway_a, stranger.chain_pem, stranger.key)
    _expect(await _capabilities(gateway_a, context), 401, "client_cert_invalid")


async def test_expired_certificate_is_401(gateway_a: Gateway) -> None:
    grant = await create_grant_fixture(gateway_a.database_url)
    now = pki.utcnow()
    context, serial = await _odd_cert(
        gateway_a,
        grant_value=valid_values(grant.grant_id, grant.user_id)[0],
        subject_value=valid_values(grant.grant_id, grant.user_id)[1],
        record_for=grant,
        not_before=now - timedelta(days=2),
        not_after=now - timedelta(days=1),
    )
    _expect(await _capabilities(gateway_a, context), 401, "client_cert_invalid")
    assert _audit_rows(gateway_a, serial) == []  # nginx refused it; the service never saw it


async def test_revoked_certificate_is_refused(gateway_a: Gateway) -> None:
    peer = await enrolled_peer(gateway_a, DEFAULT_SCOPE)
    assert (await _capabilities(gateway_a, peer.ssl_context(gateway_a))).status_code == 200
    async with httpx.AsyncClient(base_url=gateway_a.service_url("ca_broker")) as broker:
        revoked = await broker.post(
            "/revoke",
            json={"serial": pki.serial_hex(peer.cert), "reason": "test"},
            headers={"Authorization": f"Bearer {gateway_a.service_token}"},
        )
    assert revoked.status_code == 200
    # At the verbs (even before nginx has the new CRL): the serial is revoked in the database.
    direct = await _direct(gateway_a, peer.cert)
    _expect(direct, 401, "client_cert_revoked")


@pytest.mark.parametrize(
    ("case", "values"),
    [
        ("missing-grant", lambda g, u: (None, encode_uuid_utf8string(u))),
        ("missing-subject", lambda g, u: (encode_uuid_utf8string(g), None)),
        (
            "malformed-value",
            lambda g, u: (b"\x13\x24" + str(g).encode(), encode_uuid_utf8string(u)),
        ),
        (
            "uppercase-uuid",
            lambda g, u: (b"\x0c\x24" + str(g).upper().encode(), encode_uuid_utf8string(u)),
        ),
    ],
)
async def test_certificate_with_missing_or_malformed_oid_is_401_malformed(
    gateway_a: Gateway, case: str, values: Any
) -> None:
    grant = await create_grant_fixture(gateway_a.database_url)
    grant_value, subject_value = values(grant.grant_id, grant.user_id)
    context, _ = await _odd_cert(
        gateway_a, grant_value=grant_value, subject_value=subject_value, record_for=grant
    )
    _expect(await _capabilities(gateway_a, context), 401, "client_cert_malformed")


async def test_certificate_with_a_doubled_oid_is_refused(gateway_a: Gateway) -> None:
    grant = await create_grant_fixture(gateway_a.database_url)
    ca = await gateway_ca(gateway_a)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = with_duplicate_grant_oid(
        ca, key, peer_id=grant.peer_id, grant_id=grant.grant_id, subject_user_id=grant.user_id
    )
    await record_certificate(gateway_a, cert, grant.grant_id, grant.peer_id)
    context = _context(gateway_a, pki.cert_pem(cert) + pki.cert_pem(ca.intermediate_cert), key)
    response = await _capabilities(gateway_a, context)
    assert response.status_code == 401
    # nginx (OpenSSL) may already refuse the doubled extension; if it passes, the verbs do.
    assert response.json()["error"]["code"] in {"client_cert_invalid", "client_cert_malformed"}
    direct = await _direct(gateway_a, cert)
    _expect(direct, 401, "client_cert_malformed")


async def test_certificate_the_ca_never_recorded_is_401(gateway_a: Gateway) -> None:
    grant = await create_grant_fixture(gateway_a.database_url)
    context, _ = await _odd_cert(
        gateway_a,
        grant_value=valid_values(grant.grant_id, grant.user_id)[0],
        subject_value=valid_values(grant.grant_id, grant.user_id)[1],
    )
    _expect(await _capabilities(gateway_a, context), 401, "client_cert_unknown")


@pytest.mark.parametrize("case", ["unknown-grant", "other-users-grant", "other-peers-grant"])
async def test_oids_naming_a_grant_that_is_not_this_certificates_is_403(
    gateway_a: Gateway, case: str
) -> None:
    mine = await create_grant_fixture(gateway_a.database_url, status=_active())
    other = await create_grant_fixture(gateway_a.database_url, status=_active())
    _activate_peer(gateway_a, mine.peer_id)
    record_for = mine
    grant_id, user_id = mine.grant_id, mine.user_id
    if case == "unknown-grant":
        grant_id = uuid.uuid4()
    elif case == "other-users-grant":
        user_id = other.user_id
    else:  # the certificate was issued to another peer than the grant's
        record_for = type(mine)(mine.user_id, other.peer_id, other.peer_name, mine.grant_id)
    context, serial = await _odd_cert(
        gateway_a,
        grant_value=encode_uuid_utf8string(grant_id),
        subject_value=encode_uuid_utf8string(user_id),
        record_for=record_for,
    )
    _expect(await _capabilities(gateway_a, context), 403, "grant_not_found")
    assert _audit_rows(gateway_a, serial) == [("denied", "grant_not_found")]


def _active() -> Any:
    from fedcore.models import GrantStatus

    return GrantStatus.ACTIVE


def _activate_peer(gw: Gateway, peer_id: uuid.UUID) -> None:
    fetch_all(
        gw.database_url,
        "UPDATE federation_peers SET state = 'active' WHERE id = %s RETURNING id",
        (peer_id,),
    )


@pytest.mark.parametrize(
    ("status", "expires", "code"),
    [
        ("pending", None, "grant_pending"),
        ("revoked", None, "grant_revoked"),
        ("active", "past", "grant_expired"),
        ("expired", None, "grant_expired"),
    ],
)
async def test_grant_not_active_is_403_with_its_code(
    gateway_a: Gateway, status: str, expires: str | None, code: str
) -> None:
    peer = await enrolled_peer(gateway_a, DEFAULT_SCOPE)
    fetch_all(
        gateway_a.database_url,
        "UPDATE federation_grants SET status = %s, "
        "expires_at = CASE WHEN %s THEN now() - interval '1 minute' ELSE NULL END "
        "WHERE id = %s RETURNING id",
        (status, expires == "past", peer.grant.grant_id),
    )
    response = await _capabilities(gateway_a, peer.ssl_context(gateway_a))
    _expect(response, 403, code)
    assert _audit_rows(gateway_a, pki.serial_hex(peer.cert))[-1] == ("denied", code)


@pytest.mark.parametrize(
    "stored",
    [
        json.dumps({**DEFAULT_SCOPE, "max_rows_per_query": "many"}),  # fails the schema
        json.dumps(json.dumps(DEFAULT_SCOPE)),  # a JSON *string* holding a valid scope
    ],
    ids=["invalid-field", "json-string"],
)
async def test_a_stored_scope_the_schema_refuses_is_403_grant_invalid(
    gateway_a: Gateway, stored: str
) -> None:
    """A grant whose stored scope no longer validates (edited by hand, an older schema) cannot
    be used, and the refusal does not describe the scope."""
    peer = await enrolled_peer(gateway_a, DEFAULT_SCOPE)
    fetch_all(
        gateway_a.database_url,
        "UPDATE federation_grants SET scope = %s::jsonb WHERE id = %s RETURNING id",
        (stored, peer.grant.grant_id),
    )
    response = await _capabilities(gateway_a, peer.ssl_context(gateway_a))
    _expect(response, 403, "grant_invalid")
    assert "max_rows_per_query" not in response.text
    assert _audit_rows(gateway_a, pki.serial_hex(peer.cert))[-1] == ("denied", "grant_invalid")


async def test_suspended_peer_is_403(gateway_a: Gateway) -> None:
    peer = await enrolled_peer(gateway_a, DEFAULT_SCOPE)
    fetch_all(
        gateway_a.database_url,
        "UPDATE federation_peers SET state = 'suspended' WHERE id = %s RETURNING id",
        (peer.grant.peer_id,),
    )
    _expect(await _capabilities(gateway_a, peer.ssl_context(gateway_a)), 403, "peer_not_active")


# -- straight to the verbs port, around nginx --------------------------------------------------


def _proxy_secret(gw: Gateway) -> str:
    secrets: dict[str, str] = json.loads((gw.spec.state_dir / "secrets.json").read_text())
    return secrets["proxy_secret"]


async def _direct(
    gw: Gateway, cert: Any, *, secret: str | None = None, verify: str = "SUCCESS"
) -> httpx.Response:
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    headers = {
        "X-Client-Cert": urllib.parse.quote(pem),
        "X-Client-Verify": verify,
        "X-Mosaic-Proxy-Secret": _proxy_secret(gw) if secret is None else secret,
    }
    async with httpx.AsyncClient(base_url=gw.service_url("verbs"), timeout=10) as client:
        return await client.get("/api/federation/v1/capabilities", headers=headers)


async def test_direct_request_without_the_proxy_secret_is_401(gateway_a: Gateway) -> None:
    peer = await enrolled_peer(gateway_a, DEFAULT_SCOPE)
    real = _proxy_secret(gateway_a)
    # One character off (never the same character: a secret ending in "x" made this flaky).
    off_by_one = real[:-1] + ("y" if real.endswith("x") else "x")
    for secret in ("", "guess", off_by_one):
        _expect(await _direct(gateway_a, peer.cert, secret=secret), 401, "untrusted_proxy")
    # the same certificate with the right secret is accepted: the secret is what was missing
    assert (await _direct(gateway_a, peer.cert)).status_code == 200


async def test_direct_request_with_a_certificate_never_issued_is_401(gateway_a: Gateway) -> None:
    forged = issue_client(pki.generate_ca_hierarchy("forger"))
    _expect(await _direct(gateway_a, forged.cert), 401, "client_cert_invalid")


async def test_direct_request_that_nginx_did_not_verify_is_401(gateway_a: Gateway) -> None:
    peer = await enrolled_peer(gateway_a, DEFAULT_SCOPE)
    _expect(
        await _direct(gateway_a, peer.cert, verify="FAILED:unknown ca"), 401, "client_cert_invalid"
    )


async def test_client_supplied_identity_headers_through_nginx_are_overwritten(
    gateway_a: Gateway,
) -> None:
    """A peer with a valid certificate sends another (valid, active) peer's certificate in
    X-Client-Cert: the verbs answer for the presented certificate's grant only."""
    me = await enrolled_peer(gateway_a, DEFAULT_SCOPE)
    victim = await enrolled_peer(gateway_a, DEFAULT_SCOPE)
    forged = urllib.parse.quote(victim.cert.public_bytes(serialization.Encoding.PEM).decode())
    async with me.client(gateway_a) as client:
        response = await client.get(
            "/capabilities",
            headers={
                "X-Client-Cert": forged,
                "X-Client-Verify": "SUCCESS",
                "X-Mosaic-Proxy-Secret": "x",
            },
        )
    assert response.status_code == 200
    assert response.json()["grant_id"] == str(me.grant.grant_id)


async def test_resource_outside_the_scope_is_403(gateway_a: Gateway) -> None:
    peer = await enrolled_peer(
        gateway_a, {**DEFAULT_SCOPE, "resources": ["tasks"], "excluded_resources": ["notes"]}
    )
    async with peer.client(gateway_a) as client:
        for resource in ("notes", "credentials", "teams", "users"):
            for method, path in (
                ("POST", f"/list/{resource}"),
                ("POST", f"/get/{resource}/{uuid.uuid4()}"),
            ):
                response = await client.request(method, path)
                _expect(response, 403, "resource_not_in_scope")
            searched = await client.post(f"/search/{resource}", json={"query": "x"})
            _expect(searched, 403, "resource_not_in_scope")
        _expect(await client.post("/list/secrets"), 404, "unknown_resource")


async def test_audit_has_one_row_per_request_with_the_right_outcome(gateway_a: Gateway) -> None:
    peer: PeerIdentity = await enrolled_peer(gateway_a, {**DEFAULT_SCOPE, "resources": ["tasks"]})
    serial = pki.serial_hex(peer.cert)
    expected: list[tuple[str, str | None]] = []
    async with peer.client(gateway_a) as client:
        for i in range(12):
            if i % 3 == 0:
                response = await client.post("/list/notes")
                expected.append(("denied", "resource_not_in_scope:not_granted"))
            elif i % 3 == 1:
                response = await client.post("/list/tasks")
                expected.append(("allowed", None))
            else:
                response = await client.post(f"/get/tasks/{uuid.uuid4()}")
                expected.append(("denied", "not_found"))
            assert response.status_code in (200, 403, 404)
    assert _audit_rows(gateway_a, serial) == expected


def _audit_for(gw: Gateway, serial: str) -> list[tuple[str, str | None, str | None, str]]:
    rows = fetch_all(
        gw.database_url,
        "SELECT outcome::text, reason_code, resource, action FROM federation_audit_log "
        "WHERE cert_serial = %s AND action LIKE 'verb.%%' ORDER BY id",
        (serial,),
    )
    return [(o, r, res, a) for o, r, res, a in rows]


async def test_malformed_requests_from_a_peer_are_refused_and_audited(gateway_a: Gateway) -> None:
    """Every request that reaches the verbs leaves one audit row, whatever is wrong with it."""
    peer = await enrolled_peer(gateway_a, DEFAULT_SCOPE)
    serial = pki.serial_hex(peer.cert)
    async with peer.client(gateway_a) as client:
        cases = [
            (
                await client.post("/search/tasks", json={"query": "a\u0000b"}),
                422,
                "validation_error",
            ),
            (await client.post("/list/tasks", json={"limit": 5000}), 422, "validation_error"),
            (await client.post("/list/tasks", content=b"{not json"), 422, "validation_error"),
            (await client.post("/search/tasks"), 422, "validation_error"),
            (await client.post("/list/" + "x" * 65), 404, "unknown_resource"),
            (await client.post("/list/%1b%5b2J%0aX"), 404, "unknown_resource"),
            (await client.get("/list/tasks"), 404, "unknown_verb"),
            (await client.post("/delete/tasks"), 404, "unknown_verb"),
            (await client.post("/list/tasks/"), 404, "unknown_verb"),  # no redirect
        ]
    for response, status, code in cases:
        _expect(response, status, code)
        assert "location" not in response.headers
    rows = _audit_for(gateway_a, serial)
    assert [(o, r) for o, r, _, _ in rows] == [("denied", code) for _, _, code in cases]
    # The peer's raw path text never reaches the audit row: only known names or "unknown".
    assert {res for _, _, res, _ in rows} <= {"tasks", "unknown", None}


async def test_an_unauthenticated_caller_learns_nothing_about_bodies(gateway_a: Gateway) -> None:
    peer = await enrolled_peer(gateway_a, DEFAULT_SCOPE)
    pem = peer.cert.public_bytes(serialization.Encoding.PEM).decode()
    headers = {"X-Client-Cert": urllib.parse.quote(pem), "X-Client-Verify": "SUCCESS"}
    async with httpx.AsyncClient(base_url=gateway_a.service_url("verbs"), timeout=10) as client:
        response = await client.post(
            "/api/federation/v1/list/tasks", json={"limit": 5000}, headers=headers
        )
    _expect(response, 401, "untrusted_proxy")
