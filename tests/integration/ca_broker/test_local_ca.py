"""The ca-broker with its local backend: issuing, the post-issuance check, recording, revocation,
the CRL, and the CA keys at rest."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import ca_broker.crl
from ca_broker.backends import IssuedChain, IssueRequest
from ca_broker.backends.local import LocalBackend
from ca_broker.crl import CrlPublisher
from ca_broker.keystore import INTERMEDIATE_KEY_PURPOSE, ROOT_KEY_PURPOSE
from fedcore import pki
from fedcore.csr import make_csr
from fedcore.federation_oids import GRANT_ID_OID, SUBJECT_USER_ID_OID, extract_federation_identity
from fedcore.sealing import Sealer, SealingError
from tests.integration.ca_broker.conftest import Broker
from tests.support.factories import GrantFixture, create_grant_fixture


def _sql(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def _certificate_rows(url: str) -> list[tuple[object, ...]]:
    with _sql(url) as conn:
        return conn.execute(
            "SELECT serial, grant_id, peer_id, fingerprint_sha256, not_after, revoked_at "
            "FROM federation_certificates"
        ).fetchall()


def _sign_body(fx: GrantFixture, csr_pem: str, **extra: object) -> dict[str, object]:
    return {
        "csr_pem": csr_pem,
        "grant_id": str(fx.grant_id),
        "subject_user_id": str(fx.user_id),
        "peer_id": str(fx.peer_id),
        **extra,
    }


async def _sign(broker: Broker, fx: GrantFixture, **extra: object) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    response = await broker.client.post(
        "/sign",
        json=_sign_body(fx, make_csr(key, "whatever-the-peer-asks"), **extra),
        headers=broker.auth,
    )
    assert response.status_code == 201, response.text
    return pki.load_pem_chain(response.json()["cert_pem"])[0]


async def test_issued_certificate_carries_the_profile_and_is_recorded(broker: Broker) -> None:
    fx = await create_grant_fixture(broker.database_url)
    key = ec.generate_private_key(ec.SECP256R1())
    response = await broker.client.post(
        "/sign", json=_sign_body(fx, make_csr(key, "asked-name")), headers=broker.auth
    )
    assert response.status_code == 201
    body = response.json()
    chain = pki.load_pem_chain(body["cert_chain_pem"])
    cert = chain[0]

    identity = extract_federation_identity(cert)
    assert identity.grant_id == fx.grant_id
    assert identity.subject_user_id == fx.user_id
    # CN is the registered peer name, not what the CSR asked for.
    assert cert.subject.rfc4514_string() == f"CN={fx.peer_name}"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.extensions.get_extension_for_oid(GRANT_ID_OID).critical is False
    assert cert.extensions.get_extension_for_oid(SUBJECT_USER_ID_OID).critical is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.public_key() == key.public_key()
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(hours=24) <= lifetime <= timedelta(hours=24, minutes=6)

    roots = pki.load_pem_chain((broker.pki_dir / "ca.pem").read_bytes())
    pki.verify_client_certificate(cert, chain[1:], roots[:1])

    rows = _certificate_rows(broker.database_url)
    assert len(rows) == 1
    serial, grant_id, peer_id, fingerprint, _, revoked_at = rows[0]
    assert serial == body["serial"] == pki.serial_hex(cert)
    assert (grant_id, peer_id) == (fx.grant_id, fx.peer_id)
    assert fingerprint == body["fingerprint_sha256"] == pki.fingerprint_sha256(cert)
    assert revoked_at is None


async def test_ttl_is_capped_at_the_configured_maximum(broker: Broker) -> None:
    fx = await create_grant_fixture(broker.database_url)
    cert = await _sign(broker, fx, ttl_seconds=30 * 86400)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= timedelta(seconds=broker.settings.max_ttl_seconds, minutes=6)
    short = await _sign(broker, fx, ttl_seconds=600)
    assert short.not_valid_after_utc - short.not_valid_before_utc <= timedelta(minutes=16)


async def test_sign_without_the_service_token_is_refused_and_nothing_recorded(
    broker: Broker,
) -> None:
    fx = await create_grant_fixture(broker.database_url)
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), "peer")
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic x"}):
        response = await broker.client.post("/sign", json=_sign_body(fx, csr), headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "service_token_required"
    assert _certificate_rows(broker.database_url) == []


@pytest.mark.parametrize(
    "mutate",
    ["other_user", "other_grant_of_other_peer", "unknown_grant"],
)
async def test_sign_refuses_an_identity_that_contradicts_the_grant(
    broker: Broker, mutate: str
) -> None:
    fx = await create_grant_fixture(broker.database_url)
    other = await create_grant_fixture(broker.database_url)
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), "peer")
    body = _sign_body(fx, csr)
    if mutate == "other_user":
        body["subject_user_id"] = str(other.user_id)
        expected = (400, "grant_mismatch")
    elif mutate == "other_grant_of_other_peer":
        body["grant_id"] = str(other.grant_id)
        expected = (400, "grant_mismatch")
    else:
        body["grant_id"] = str(uuid.uuid4())
        expected = (404, "grant_not_found")
    response = await broker.client.post("/sign", json=body, headers=broker.auth)
    assert (response.status_code, response.json()["error"]["code"]) == expected
    assert _certificate_rows(broker.database_url) == []


async def test_invalid_csr_is_refused_with_its_code_and_nothing_recorded(broker: Broker) -> None:
    fx = await create_grant_fixture(broker.database_url)
    p384 = make_csr_unchecked(ec.generate_private_key(ec.SECP384R1()))
    for csr in ("garbage", p384):
        response = await broker.client.post("/sign", json=_sign_body(fx, csr), headers=broker.auth)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_csr"
        assert "BEGIN" not in response.json()["error"]["message"]
    assert _certificate_rows(broker.database_url) == []


def make_csr_unchecked(key: ec.EllipticCurvePrivateKey) -> str:
    """A well-formed CSR that skips our own checks (here: for a P-384 key)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


class DroppingBackend(LocalBackend):
    """A backend that 'forgets' the subject-user OID, as a misconfigured template would."""

    async def issue(self, request: IssueRequest) -> IssuedChain:
        honest = await super().issue(request)
        cert = pki.load_pem_chain(honest.cert_pem)[0]
        dropped = x509.CertificateBuilder(
            issuer_name=cert.issuer,
            subject_name=cert.subject,
            public_key=cert.public_key(),
            serial_number=x509.random_serial_number(),
            not_valid_before=cert.not_valid_before_utc,
            not_valid_after=cert.not_valid_after_utc,
            extensions=[e for e in cert.extensions if e.oid != SUBJECT_USER_ID_OID],
        ).sign(self.hierarchy.intermediate_key, hashes.SHA256())
        return replace(honest, cert_pem=pki.cert_pem(dropped))


class SwappingBackend(LocalBackend):
    """A backend that writes another grant's id into the certificate."""

    async def issue(self, request: IssueRequest) -> IssuedChain:
        return await super().issue(replace(request, grant_id=uuid.uuid4()))


@pytest.mark.parametrize("backend_cls", [DroppingBackend, SwappingBackend])
async def test_post_issuance_check_catches_a_backend_that_alters_the_oids(
    broker: Broker, backend_cls: type[LocalBackend]
) -> None:
    fx = await create_grant_fixture(broker.database_url)
    service = broker.app.state.ca_service
    service.backend = backend_cls(service.backend.hierarchy)
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), "peer")
    response = await broker.client.post("/sign", json=_sign_body(fx, csr), headers=broker.auth)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "issuance_check_failed"
    assert "cert_pem" not in response.json()
    assert _certificate_rows(broker.database_url) == []


async def test_revoke_puts_the_serial_on_a_signed_crl_served_and_written(broker: Broker) -> None:
    fx = await create_grant_fixture(broker.database_url)
    cert = await _sign(broker, fx)
    serial = pki.serial_hex(cert)
    before = await broker.client.get("/pki/crl.pem")
    assert before.status_code == 200

    response = await broker.client.post(
        "/revoke", json={"serial": serial, "reason": "grant revoked"}, headers=broker.auth
    )
    assert response.status_code == 200
    assert response.json()["already_revoked"] is False

    served = (await broker.client.get("/pki/crl.pem")).text
    on_disk = (broker.pki_dir / "crl.pem").read_text()
    assert served == on_disk
    crls = [x509.load_pem_x509_crl(block.encode()) for block in _pem_blocks(served)]
    bundle = pki.load_pem_chain((broker.pki_dir / "ca.pem").read_bytes())
    root, intermediate = bundle[0], bundle[1]
    leaf_crl, root_crl = crls
    assert leaf_crl.is_signature_valid(intermediate.public_key())  # type: ignore[arg-type]
    assert root_crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    assert leaf_crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert leaf_crl.next_update_utc is not None
    assert leaf_crl.next_update_utc > pki.utcnow() + timedelta(hours=23)
    number = leaf_crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    old = x509.load_pem_x509_crl(_pem_blocks(before.text)[0].encode())
    assert number > old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number

    again = await broker.client.post("/revoke", json={"serial": serial}, headers=broker.auth)
    assert again.json()["already_revoked"] is True
    rows = _certificate_rows(broker.database_url)
    assert rows[0][5] is not None


async def test_revoke_refusals(broker: Broker) -> None:
    unknown = await broker.client.post("/revoke", json={"serial": "abc123"}, headers=broker.auth)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "certificate_not_found"
    no_token = await broker.client.post("/revoke", json={"serial": "abc123"})
    assert no_token.status_code == 401
    assert no_token.json()["error"]["code"] == "service_token_required"
    bad_serial = await broker.client.post(
        "/revoke", json={"serial": "not hex; drop"}, headers=broker.auth
    )
    assert bad_serial.status_code == 422


def _pem_blocks(text: str) -> list[str]:
    marker = "-----END X509 CRL-----"
    return [part.strip() + "\n" + marker + "\n" for part in text.split(marker) if part.strip()]


async def test_crl_is_regenerated_before_it_lapses(broker: Broker) -> None:
    publisher: CrlPublisher = broker.app.state.ca_service.crl
    first = publisher.current
    assert first is not None
    await publisher.refresh_if_needed()
    assert publisher.current is first  # fresh and unchanged: no rewrite
    publisher.current = replace(first, next_update=pki.utcnow() + timedelta(minutes=1))
    await publisher.refresh_if_needed()
    assert publisher.current is not None
    assert publisher.current.crl_number > first.crl_number
    assert publisher.current.next_update > pki.utcnow() + timedelta(hours=23)


@pytest.mark.parametrize(
    ("revoke_sql", "reason"),
    [
        ("UPDATE federation_grants SET status = 'revoked' WHERE id = %s", "grant_revoked"),
        (
            "UPDATE federation_peers SET state = 'revoked' WHERE id = "
            "(SELECT peer_id FROM federation_grants WHERE id = %s)",
            "peer_revoked",
        ),
    ],
    ids=["grant", "peer"],
)
async def test_the_refresher_revokes_certificates_a_revocation_left_live(
    broker: Broker, revoke_sql: str, reason: str
) -> None:
    """A revocation commits first and revokes its certificates after; if that step never
    finishes (the grants service died), the broker's refresher still puts them on the CRL."""
    fx = await create_grant_fixture(broker.database_url)
    other = await create_grant_fixture(broker.database_url)
    cert = await _sign(broker, fx)
    bystander = await _sign(broker, other)
    with _sql(broker.database_url) as conn:
        conn.execute(revoke_sql, (fx.grant_id,))  # committed; its certificate step never ran
    publisher: CrlPublisher = broker.app.state.ca_service.crl
    await publisher.refresh_if_needed()
    with _sql(broker.database_url) as conn:
        rows = {
            serial: revoked_reason
            for serial, revoked_reason in conn.execute(
                "SELECT serial, revoked_reason FROM federation_certificates"
            ).fetchall()
        }
    assert rows == {pki.serial_hex(cert): reason, pki.serial_hex(bystander): None}
    assert publisher.current is not None
    assert publisher.current.revoked_serials == {pki.serial_hex(cert)}
    crl = x509.load_pem_x509_crl(publisher.current.pem.encode())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(bystander.serial_number) is None


@pytest.mark.parametrize(
    "state_sql",
    [
        "UPDATE federation_grants SET status = 'expired' WHERE id = %s",
        "UPDATE federation_grants SET status = 'pending' WHERE id = %s",
        "UPDATE federation_peers SET state = 'suspended' WHERE id = "
        "(SELECT peer_id FROM federation_grants WHERE id = %s)",
    ],
    ids=["expired-grant", "pending-grant", "suspended-peer"],
)
async def test_the_refresher_leaves_certificates_of_grants_that_are_not_revoked(
    broker: Broker, state_sql: str
) -> None:
    fx = await create_grant_fixture(broker.database_url)
    cert = await _sign(broker, fx)
    with _sql(broker.database_url) as conn:
        conn.execute(state_sql, (fx.grant_id,))
    publisher: CrlPublisher = broker.app.state.ca_service.crl
    await publisher.refresh_if_needed()
    assert [row[5] for row in _certificate_rows(broker.database_url)] == [None]
    assert publisher.current is not None
    assert pki.serial_hex(cert) not in publisher.current.revoked_serials


async def test_a_failing_sweep_does_not_stop_the_crl_refresh(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CRL must never lapse (nginx would refuse every handshake): a sweep that fails is
    logged and the refresh goes on."""

    async def broken(_: object) -> list[str]:
        raise RuntimeError("database away")

    monkeypatch.setattr(ca_broker.crl, "revoke_certificates_of_revoked_grants", broken)
    publisher: CrlPublisher = broker.app.state.ca_service.crl
    first = publisher.current
    assert first is not None
    publisher.current = replace(first, next_update=pki.utcnow() + timedelta(minutes=1))
    await publisher.refresh_if_needed()
    assert publisher.current is not None
    assert publisher.current.crl_number > first.crl_number


@pytest.mark.parametrize(
    ("grant_status", "expected", "answer"),
    [
        ("pending", "pending", 201),
        ("active", "active", 201),
        ("active", "pending", 409),  # an enrollment's late signature after the grant activated
        ("pending", "active", 409),
    ],
)
async def test_the_last_look_refuses_a_grant_that_left_the_state_the_caller_saw(
    broker: Broker, grant_status: str, expected: str, answer: int
) -> None:
    fx = await create_grant_fixture(broker.database_url)
    with _sql(broker.database_url) as conn:
        conn.execute(
            "UPDATE federation_grants SET status = %s WHERE id = %s", (grant_status, fx.grant_id)
        )
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), "peer")
    response = await broker.client.post(
        "/sign", json=_sign_body(fx, csr, grant_status=expected), headers=broker.auth
    )
    assert response.status_code == answer, response.text
    if answer == 409:
        assert response.json()["error"]["code"] == "grant_not_issuable"
        assert _certificate_rows(broker.database_url) == []


async def test_ca_private_keys_are_ciphertext_at_rest(broker: Broker) -> None:
    with _sql(broker.database_url) as conn:
        rows = conn.execute("SELECT role, sealed_private_key FROM ca_keypairs").fetchall()
    assert {str(role) for role, _ in rows} == {"root", "intermediate"}
    sealer: Sealer = broker.settings.ca_sealer()
    gateway_sealer = broker.settings.secrets.sealer()
    for role, blob in rows:
        assert isinstance(blob, bytes)
        raw = blob
        assert raw.startswith(b"MSL1")
        assert b"PRIVATE KEY" not in raw
        assert b"-----BEGIN" not in raw
        purpose = ROOT_KEY_PURPOSE if str(role) == "root" else INTERMEDIATE_KEY_PURPOSE
        assert b"PRIVATE KEY" in sealer.unseal(raw, purpose=purpose)
        # The gateway secret, which every service holds, cannot open the CA keys.
        with pytest.raises(SealingError):
            gateway_sealer.unseal(raw, purpose=purpose)
    on_disk = b"".join(p.read_bytes() for p in broker.pki_dir.iterdir() if p.is_file())
    assert on_disk.count(b"PRIVATE KEY-----") == 2  # only server.key's BEGIN/END lines
    assert (broker.pki_dir / "server.key").stat().st_mode & 0o077 == 0


async def test_bundle_is_public_and_verifies_the_server_certificate(broker: Broker) -> None:
    response = await broker.client.get("/pki/ca.pem")
    assert response.status_code == 200
    bundle = pki.load_pem_chain(response.text)
    server_chain = pki.load_pem_chain((broker.pki_dir / "server.pem").read_bytes())
    server_chain[0].verify_directly_issued_by(bundle[1])
    bundle[1].verify_directly_issued_by(bundle[0])


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        (
            "UPDATE federation_grants SET status = 'revoked' WHERE id = %(grant)s",
            "grant_not_issuable",
        ),
        (
            "UPDATE federation_grants SET status = 'expired' WHERE id = %(grant)s",
            "grant_not_issuable",
        ),
        (
            "UPDATE federation_grants SET expires_at = now() - interval '1 second' "
            "WHERE id = %(grant)s",
            "grant_not_issuable",
        ),
        ("UPDATE federation_peers SET state = 'revoked' WHERE id = %(peer)s", "peer_not_issuable"),
        (
            "UPDATE federation_peers SET state = 'suspended' WHERE id = %(peer)s",
            "peer_not_issuable",
        ),
        (
            "UPDATE federation_peers SET name = 'bad name{{' WHERE id = %(peer)s",
            "peer_not_issuable",
        ),
    ],
)
async def test_no_certificate_for_a_dead_grant_or_peer(broker: Broker, sql: str, code: str) -> None:
    fx = await create_grant_fixture(broker.database_url)
    with _sql(broker.database_url) as conn:
        conn.execute(sql, {"grant": fx.grant_id, "peer": fx.peer_id})
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), "peer")
    response = await broker.client.post("/sign", json=_sign_body(fx, csr), headers=broker.auth)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == code
    assert _certificate_rows(broker.database_url) == []


async def test_certificate_never_outlives_its_grant(broker: Broker) -> None:
    fx = await create_grant_fixture(broker.database_url)
    with _sql(broker.database_url) as conn:
        conn.execute(
            "UPDATE federation_grants SET expires_at = now() + interval '2 hours' WHERE id = %s",
            (fx.grant_id,),
        )
        row = conn.execute(
            "SELECT expires_at FROM federation_grants WHERE id = %s", (fx.grant_id,)
        ).fetchone()
    assert row is not None
    expires_at = row[0]
    assert isinstance(expires_at, datetime)
    cert = await _sign(broker, fx)
    assert cert.not_valid_after_utc <= expires_at


class RenamingBackend(LocalBackend):
    """A backend whose template writes some other CN."""

    async def issue(self, request: IssueRequest) -> IssuedChain:
        return await super().issue(replace(request, peer_name="someone-else"))


async def test_post_issuance_check_catches_a_foreign_subject(broker: Broker) -> None:
    fx = await create_grant_fixture(broker.database_url)
    service = broker.app.state.ca_service
    service.backend = RenamingBackend(service.backend.hierarchy)
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), "peer")
    response = await broker.client.post("/sign", json=_sign_body(fx, csr), headers=broker.auth)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "issuance_check_failed"
    assert _certificate_rows(broker.database_url) == []


async def test_server_certificate_is_reissued_when_key_and_certificate_disagree(
    broker: Broker,
) -> None:
    files = broker.app.state.pki_files
    hierarchy = broker.app.state.ca_service.backend.hierarchy
    hosts = broker.settings.server_cert_hosts
    assert files.ensure_server_certificate(hierarchy, hosts) is False  # current: nothing to do
    files.server_key_path.write_bytes(pki.private_key_pem(pki.new_ec_key()))
    assert files.ensure_server_certificate(hierarchy, hosts) is True
    key = pki.load_private_key(files.server_key_path.read_bytes())
    cert = pki.load_pem_chain(files.server_cert_path.read_bytes())[0]
    assert key.public_key() == cert.public_key()
    assert files.server_key_path.stat().st_mode & 0o777 == 0o600


def test_long_gateway_names_still_make_a_ca() -> None:
    hierarchy = pki.generate_ca_hierarchy("g" * 63)
    assert len(hierarchy.root_cert.subject.rfc4514_string()) < 120


async def test_concurrent_publishers_never_leave_an_older_crl_in_place(broker: Broker) -> None:
    """Two replicas publishing at once: each CRL number is taken under the state row's lock
    before the revoked set is read, so the newest number always covers every revocation."""
    import asyncio

    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    fx = await create_grant_fixture(broker.database_url)
    cert = await _sign(broker, fx)
    with _sql(broker.database_url) as conn:
        conn.execute(
            "UPDATE federation_certificates SET revoked_at = now() WHERE serial = %s",
            (pki.serial_hex(cert),),
        )
    mine: CrlPublisher = broker.app.state.ca_service.crl
    engine = create_async_engine(broker.database_url)
    try:
        other = CrlPublisher(
            mine.hierarchy, async_sessionmaker(engine), mine.crl_path, mine.validity
        )
        published = await asyncio.gather(*(p.publish() for p in (mine, other, mine, other)))
    finally:
        await engine.dispose()
    numbers = [p.crl_number for p in published]
    assert len(set(numbers)) == 4  # never the same number twice
    on_disk = x509.load_pem_x509_crl(_pem_blocks(mine.crl_path.read_text())[0].encode())
    number = on_disk.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == max(numbers)
    assert on_disk.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert all(pki.serial_hex(cert) in p.revoked_serials for p in published)
