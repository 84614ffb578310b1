"""The outbound side of enrollment (used by `mosaic federation peer add`):
POST /peers/keypair makes a P-256 key server-side, seals it and returns a CSR;
PATCH /peers/{connection_id}/cert stores the remote certificate only if it is for that key,
carries both federation OIDs and chains to the given (optionally pinned) CA bundle."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca_broker.profile import build_federation_certificate, peer_uri
from fedcore import pki
from fedcore.csr import validate_csr
from fedcore.federation_oids import GRANT_ID_OID, encode_uuid_utf8string
from grants import renewal
from grants.service import CONNECTION_KEY_PURPOSE
from tests.integration.grants.harness import Harness, assert_error

KEYPAIR = "/api/admin/federation/peers/keypair"
CONNECTIONS = "/api/admin/federation/connections"


@pytest.fixture(scope="module")
def remote_ca() -> pki.CaHierarchy:
    return pki.generate_ca_hierarchy("gateway-b")


def _issue(
    ca: pki.CaHierarchy,
    public_key: ec.EllipticCurvePublicKey,
    *,
    grant_id: uuid.UUID,
    subject_user_id: uuid.UUID,
    now: datetime | None = None,
) -> x509.Certificate:
    return build_federation_certificate(
        public_key=public_key,
        issuer_key=ca.intermediate_key,
        issuer_cert=ca.intermediate_cert,
        peer_name="gateway-a",
        peer_id=uuid.uuid4(),
        grant_id=grant_id,
        subject_user_id=subject_user_id,
        lifetime=timedelta(hours=24),
        now=now or pki.utcnow(),
    )


def _issue_with_grant_oid_only(
    ca: pki.CaHierarchy, public_key: ec.EllipticCurvePublicKey
) -> x509.Certificate:
    now = pki.utcnow()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-a")]))
        .issuer_name(ca.intermediate_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(peer_uri(uuid.uuid4()))]),
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(GRANT_ID_OID, encode_uuid_utf8string(uuid.uuid4())),
            critical=False,
        )
        .sign(ca.intermediate_key, hashes.SHA256())
    )


def _body(ca: pki.CaHierarchy, cert: x509.Certificate, **extra: Any) -> dict[str, Any]:
    return {
        "cert_pem": pki.cert_pem(cert),
        "cert_chain_pem": pki.cert_pem(cert) + pki.cert_pem(ca.intermediate_cert),
        "ca_bundle_pem": pki.cert_pem(ca.root_cert) + pki.cert_pem(ca.intermediate_cert),
        "expected_ca_fingerprint_sha256": pki.fingerprint_sha256(ca.root_cert),
        **extra,
    }


async def _keypair(harness: Harness, name: str = "to-gateway-a") -> dict[str, Any]:
    created: dict[str, Any] = await harness.ok(
        "POST", KEYPAIR, 201, json={"name": name, "endpoint_url": "https://gateway-a.example:8443"}
    )
    return created


def _csr_key(keypair: dict[str, Any]) -> ec.EllipticCurvePublicKey:
    key = validate_csr(keypair["csr_pem"]).public_key
    return key


async def test_keypair_seals_the_key_and_returns_a_valid_csr(harness: Harness) -> None:
    keypair = await _keypair(harness)
    assert keypair["state"] == "pending"
    checked = validate_csr(keypair["csr_pem"])
    assert checked.common_name == "to-gateway-a"
    row = harness.db.snapshot("federation_connections", keypair["connection_id"])
    sealed = bytes(row["sealed_private_key"])
    assert sealed.startswith(b"MSL1")
    assert b"PRIVATE KEY" not in sealed
    assert row["state"] == "pending"
    assert row["cert_pem"] is None
    assert row["endpoint_url"] == "https://gateway-a.example:8443"
    private = pki.load_private_key(
        harness.settings.secrets.sealer().unseal(sealed, purpose=CONNECTION_KEY_PURPOSE)
    )
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert private.public_key().public_bytes(der, spki) == checked.public_key.public_bytes(
        der, spki
    )
    assert "private" not in repr(keypair).lower()


async def test_keypair_refusals(harness: Harness) -> None:
    await _keypair(harness, "dup")
    again = await harness.call(
        "POST", KEYPAIR, json={"name": "dup", "endpoint_url": "https://x.example"}
    )
    assert_error(again, 409, "connection_name_taken")
    for body in (
        {"name": "bad name", "endpoint_url": "https://x.example"},
        {"name": "ok", "endpoint_url": "http://x.example"},
        {"name": "ok", "endpoint_url": "https://" + "a" * 64 + ".example"},  # label > 63
        {"name": "ok", "endpoint_url": "https://\u2603.example"},  # not a valid IDNA name
        {"name": "ok"},
    ):
        assert_error(await harness.call("POST", KEYPAIR, json=body), 422, "validation_error")
    assert harness.db.count("federation_connections") == 1


async def test_a_matching_certificate_activates_the_connection(
    harness: Harness, remote_ca: pki.CaHierarchy
) -> None:
    keypair = await _keypair(harness)
    grant_id, user_id = uuid.uuid4(), uuid.uuid4()
    cert = _issue(remote_ca, _csr_key(keypair), grant_id=grant_id, subject_user_id=user_id)
    pin = pki.fingerprint_sha256(remote_ca.root_cert)
    body = _body(
        remote_ca,
        cert,
        expected_grant_id=str(grant_id),
        expected_subject_user_id=str(user_id),
        expected_ca_fingerprint_sha256=pin,
    )
    active = await harness.ok(
        "PATCH", f"/api/admin/federation/peers/{keypair['connection_id']}/cert", json=body
    )
    assert active["state"] == "active"
    assert active["remote_grant_id"] == str(grant_id)
    assert active["remote_subject_user_id"] == str(user_id)
    assert active["ca_fingerprint_sha256"] == pin
    assert active["cert_serial"] == pki.serial_hex(cert)
    row = harness.db.snapshot("federation_connections", keypair["connection_id"])
    assert row["state"] == "active"
    assert row["cert_pem"] == pki.cert_pem(cert)
    assert row["ca_bundle_pem"] == body["ca_bundle_pem"]
    assert row["cert_not_after"] == cert.not_valid_after_utc
    shown = await harness.ok("GET", f"{CONNECTIONS}/{keypair['connection_id']}")
    assert shown == active
    assert [
        c["id"] for c in (await harness.ok("GET", CONNECTIONS, params={"state": "active"}))["items"]
    ] == [keypair["connection_id"]]
    [audit] = [r for r in harness.db.audit() if r["action"] == "connection.certificate"]
    assert (audit["outcome"], audit["grant_id"], audit["subject_user_id"]) == (
        "allowed",
        grant_id,
        user_id,
    )
    # A second certificate for an active connection is an illegal transition.
    again = await harness.call(
        "PATCH", f"/api/admin/federation/peers/{keypair['connection_id']}/cert", json=body
    )
    assert_error(again, 409, "invalid_transition")


def _other_ca() -> pki.CaHierarchy:
    return pki.generate_ca_hierarchy("mallory")


REFUSALS = [
    "key",
    "oid",
    "chain",
    "grant",
    "pin",
    "foreign-root",
    "garbage",
    "two-certs",
    "expired",
]


@pytest.mark.parametrize("case", REFUSALS)
async def test_a_bad_certificate_is_refused_and_the_connection_stays_pending(
    harness: Harness, remote_ca: pki.CaHierarchy, case: str
) -> None:
    keypair = await _keypair(harness)
    key = _csr_key(keypair)
    ids: dict[str, Any] = {"grant_id": uuid.uuid4(), "subject_user_id": uuid.uuid4()}
    good = _issue(remote_ca, key, **ids)
    body, code = _body(remote_ca, good), ""
    if case == "key":
        body, code = (
            _body(remote_ca, _issue(remote_ca, pki.new_ec_key().public_key(), **ids)),
            "certificate_key_mismatch",
        )
    elif case == "oid":
        body, code = (
            _body(remote_ca, _issue_with_grant_oid_only(remote_ca, key)),
            "certificate_identity_invalid",
        )
    elif case == "chain":
        other = _other_ca()
        body = {
            **_body(other, _issue(other, key, **ids)),
            "ca_bundle_pem": body["ca_bundle_pem"],
            "expected_ca_fingerprint_sha256": body["expected_ca_fingerprint_sha256"],
        }
        code = "certificate_chain_invalid"
    elif case == "grant":
        body, code = (
            {**body, "expected_grant_id": str(uuid.uuid4())},
            "certificate_identity_mismatch",
        )
    elif case == "pin":
        body, code = {**body, "expected_ca_fingerprint_sha256": "0" * 64}, "ca_fingerprint_mismatch"
    elif case == "foreign-root":
        # The genuine root first (so a first-root pin check passes), another root behind it,
        # and a certificate from that other CA: the pin must cover the whole trust set.
        mallory = _other_ca()
        body = {
            **_body(mallory, _issue(mallory, key, **ids)),
            "ca_bundle_pem": body["ca_bundle_pem"] + pki.cert_pem(mallory.root_cert),
            "expected_ca_fingerprint_sha256": pki.fingerprint_sha256(remote_ca.root_cert),
        }
        code = "ca_fingerprint_mismatch"
    elif case == "garbage":
        body, code = (
            {**body, "cert_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
            "invalid_certificate",
        )
    elif case == "two-certs":
        body, code = {**body, "cert_pem": body["cert_chain_pem"]}, "invalid_certificate"
    elif case == "expired":
        old = _issue(remote_ca, key, now=datetime.now(UTC) - timedelta(days=3), **ids)
        body, code = _body(remote_ca, old), "certificate_chain_invalid"
    before = harness.db.snapshot("federation_connections", keypair["connection_id"])
    response = await harness.call(
        "PATCH", f"/api/admin/federation/peers/{keypair['connection_id']}/cert", json=body
    )
    assert_error(response, 400, code)
    assert harness.db.snapshot("federation_connections", keypair["connection_id"]) == before
    [audit] = [r for r in harness.db.audit() if r["action"] == "connection.certificate"]
    assert (audit["outcome"], audit["reason_code"]) == ("denied", code)


async def test_a_certificate_without_a_ca_pin_is_refused(
    harness: Harness, remote_ca: pki.CaHierarchy
) -> None:
    """No trust on first use through the API either: the pin comes out of band (the enrollment
    URL's #ca_fp), never from the bundle that arrives with the certificate."""
    keypair = await _keypair(harness)
    ids: dict[str, Any] = {"grant_id": uuid.uuid4(), "subject_user_id": uuid.uuid4()}
    body = _body(remote_ca, _issue(remote_ca, _csr_key(keypair), **ids))
    del body["expected_ca_fingerprint_sha256"]
    before = harness.db.snapshot("federation_connections", keypair["connection_id"])
    response = await harness.call(
        "PATCH", f"/api/admin/federation/peers/{keypair['connection_id']}/cert", json=body
    )
    refused = assert_error(response, 422, "validation_error")
    assert refused["fields"] == [
        {"loc": ["body", "expected_ca_fingerprint_sha256"], "msg": "Field required"}
    ]
    assert harness.db.snapshot("federation_connections", keypair["connection_id"]) == before


async def test_unknown_connection_is_404(harness: Harness, remote_ca: pki.CaHierarchy) -> None:
    cert = _issue(
        remote_ca,
        pki.new_ec_key().public_key(),
        grant_id=uuid.uuid4(),
        subject_user_id=uuid.uuid4(),
    )
    response = await harness.call(
        "PATCH", f"/api/admin/federation/peers/{uuid.uuid4()}/cert", json=_body(remote_ca, cert)
    )
    assert_error(response, 404, "connection_not_found")
    assert_error(
        await harness.call("GET", f"{CONNECTIONS}/{uuid.uuid4()}"), 404, "connection_not_found"
    )


async def _active(
    harness: Harness, remote_ca: pki.CaHierarchy, name: str
) -> tuple[dict[str, Any], uuid.UUID, uuid.UUID]:
    keypair = await _keypair(harness, name)
    grant_id, user_id = uuid.uuid4(), uuid.uuid4()
    cert = _issue(remote_ca, _csr_key(keypair), grant_id=grant_id, subject_user_id=user_id)
    await harness.ok(
        "PATCH",
        f"/api/admin/federation/peers/{keypair['connection_id']}/cert",
        json=_body(remote_ca, cert),
    )
    return keypair, grant_id, user_id


async def test_an_active_connection_is_retired_for_good(
    harness: Harness, remote_ca: pki.CaHierarchy
) -> None:
    keypair, grant_id, user_id = await _active(harness, remote_ca, "to-be-retired")
    connection_id = keypair["connection_id"]
    other, _, _ = await _active(harness, remote_ca, "stays")
    for row in (connection_id, other["connection_id"]):
        harness.db.execute(
            "INSERT INTO federation_circuits (connection_id, consecutive_failures) VALUES (%s, 2)",
            (row,),
        )
    before = harness.db.snapshot("federation_connections", connection_id)
    assert before["sealed_private_key"]

    retired = await harness.ok("POST", f"{CONNECTIONS}/{connection_id}/retire")
    assert (retired["id"], retired["state"]) == (connection_id, "revoked")
    assert retired["cert_serial"] == before["cert_serial"]  # the record stays readable
    row = harness.db.snapshot("federation_connections", connection_id)
    assert row["state"] == "revoked"
    assert bytes(row["sealed_private_key"]) == b""  # nothing here can present it again
    assert row["updated_at"] > before["updated_at"]
    circuits = harness.db.rows("SELECT connection_id FROM federation_circuits")
    assert circuits == [(uuid.UUID(other["connection_id"]),)]
    assert harness.db.snapshot("federation_connections", other["connection_id"])["state"] == (
        "active"
    )
    [audit] = [r for r in harness.db.audit() if r["action"] == "connection.retire"]
    assert (audit["outcome"], audit["target_id"], audit["grant_id"], audit["subject_user_id"]) == (
        "allowed",
        connection_id,
        grant_id,
        user_id,
    )

    # Final: no second retirement, no renewal, no certificate; nothing changes.
    settled = harness.db.snapshot("federation_connections", connection_id)
    assert_error(
        await harness.call("POST", f"{CONNECTIONS}/{connection_id}/retire"),
        409,
        "invalid_transition",
    )
    assert_error(
        await harness.call("POST", f"{CONNECTIONS}/{connection_id}/renew"),
        409,
        "connection_not_active",
    )
    assert harness.db.snapshot("federation_connections", connection_id) == settled
    refused = [r for r in harness.db.audit() if r["action"] == "connection.retire"][1:]
    assert [(r["outcome"], r["reason_code"]) for r in refused] == [("denied", "invalid_transition")]


class _HeldRenewal:
    """Stands in for the peer's renew verb (grants.renewal calls it over mTLS): signs the CSR
    with the remote CA like the peer would, but only once ``release`` is set."""

    def __init__(self, ca: pki.CaHierarchy, grant_id: uuid.UUID, user_id: uuid.UUID) -> None:
        self.ca, self.grant_id, self.user_id = ca, grant_id, user_id
        self.entered, self.release = asyncio.Event(), asyncio.Event()

    def create(self, *_: Any, **__: Any) -> _HeldRenewal:
        return self

    async def __aenter__(self) -> _HeldRenewal:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def renew(self, csr_pem: str) -> SimpleNamespace:
        self.entered.set()
        await self.release.wait()
        public_key = validate_csr(csr_pem).public_key
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        cert = _issue(self.ca, public_key, grant_id=self.grant_id, subject_user_id=self.user_id)
        body = _body(self.ca, cert)
        return SimpleNamespace(cert_pem=body["cert_pem"], cert_chain_pem=body["cert_chain_pem"])


async def test_a_renewal_in_flight_when_the_connection_is_retired_stores_nothing(
    harness: Harness, remote_ca: pki.CaHierarchy, monkeypatch: pytest.MonkeyPatch
) -> None:
    keypair, grant_id, user_id = await _active(harness, remote_ca, "renewing")
    connection_id = keypair["connection_id"]
    held = _HeldRenewal(remote_ca, grant_id, user_id)
    monkeypatch.setattr(renewal, "FederationClient", held)
    renewing = asyncio.create_task(harness.call("POST", f"{CONNECTIONS}/{connection_id}/renew"))
    async with asyncio.timeout(10):
        await held.entered.wait()  # the renewal read the active row and is at the peer
    retired = await harness.ok("POST", f"{CONNECTIONS}/{connection_id}/retire")
    assert retired["state"] == "revoked"
    held.release.set()
    assert_error(await renewing, 409, "connection_changed")
    row = harness.db.snapshot("federation_connections", connection_id)
    assert (row["state"], bytes(row["sealed_private_key"])) == ("revoked", b"")
    assert row["cert_serial"] == retired["cert_serial"]  # the renewed certificate was not stored


async def test_retire_refusals(harness: Harness) -> None:
    pending = await _keypair(harness, "pending")
    before = harness.db.snapshot("federation_connections", pending["connection_id"])
    assert_error(
        await harness.call("POST", f"{CONNECTIONS}/{pending['connection_id']}/retire"),
        409,
        "invalid_transition",
    )
    assert harness.db.snapshot("federation_connections", pending["connection_id"]) == before
    unknown = uuid.uuid4()
    assert_error(
        await harness.call("POST", f"{CONNECTIONS}/{unknown}/retire"), 404, "connection_not_found"
    )
    refused = [r for r in harness.db.audit() if r["action"] == "connection.retire"]
    assert sorted((r["target_id"], r["outcome"], r["reason_code"]) for r in refused) == sorted(
        [
            (pending["connection_id"], "denied", "invalid_transition"),
            (str(unknown), "denied", "connection_not_found"),
        ]
    )


async def test_a_user_token_cannot_retire_a_connection(
    harness: Harness, remote_ca: pki.CaHierarchy
) -> None:
    keypair, _, _ = await _active(harness, remote_ca, "users-cannot")
    before = harness.db.snapshot("federation_connections", keypair["connection_id"])
    user = await harness.user()
    token, _ = harness.db.insert_token("user", uuid.UUID(user["id"]))
    for method, path in (
        ("POST", f"{CONNECTIONS}/{keypair['connection_id']}/retire"),
        ("DELETE", f"{CONNECTIONS}/{keypair['connection_id']}"),
    ):
        assert_error(
            await harness.call(method, path, headers=harness.auth(token)),
            403,
            "admin_role_required",
        )
    assert harness.db.snapshot("federation_connections", keypair["connection_id"]) == before
    denied = [r for r in harness.db.audit() if r["outcome"] == "denied"]
    assert [(r["action"], r["reason_code"]) for r in denied] == [
        ("admin.authenticate", "admin_role_required")
    ] * 2


async def test_only_a_pending_or_retired_connection_can_be_deleted(
    harness: Harness, remote_ca: pki.CaHierarchy
) -> None:
    abandoned = await _keypair(harness, "abandoned")
    kept, _, _ = await _active(harness, remote_ca, "kept")
    assert await harness.ok("DELETE", f"{CONNECTIONS}/{abandoned['connection_id']}", 204) is None
    before = harness.db.snapshot("federation_connections", kept["connection_id"])
    assert_error(
        await harness.call("DELETE", f"{CONNECTIONS}/{kept['connection_id']}"),
        409,
        "invalid_transition",
    )
    assert harness.db.snapshot("federation_connections", kept["connection_id"]) == before
    assert harness.db.count("federation_connections") == 1
    # Retired, it can go, and its name is free again.
    await harness.ok("POST", f"{CONNECTIONS}/{kept['connection_id']}/retire")
    assert await harness.ok("DELETE", f"{CONNECTIONS}/{kept['connection_id']}", 204) is None
    assert harness.db.count("federation_connections") == 0
    await _keypair(harness, "kept")
    assert_error(
        await harness.call("DELETE", f"{CONNECTIONS}/{uuid.uuid4()}"), 404, "connection_not_found"
    )
    # The name of a deleted (abandoned) attempt is free again.
    await _keypair(harness, "abandoned")
