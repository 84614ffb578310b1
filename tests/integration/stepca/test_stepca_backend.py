"""The step-ca backend against a real step-ca 0.19 server, through the broker app where it
matters: issuance, the post-issuance check, both key sources, the one-time token, replay, outage,
and the absent CRL."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

import ca_broker.app
from ca_broker.backends import IssueRequest
from ca_broker.backends import stepca as stepca_backend
from ca_broker.backends.stepca import (
    ProvisionerKeyError,
    StepCaBackend,
    StepCaConfigError,
    decrypt_provisioner_jwe,
    load_provisioner_jwk,
)
from ca_broker.settings import Settings
from fedcore import pki
from fedcore.broker_client import CaRefused, CaUnavailable
from fedcore.csr import make_csr, validate_csr
from fedcore.federation_oids import extract_federation_identity
from fedcore.models import (
    FederationCertificate,
    FederationGrant,
    FederationPeer,
    GrantStatus,
    PeerState,
    User,
)
from tests.support import stepca
from tests.support.apps import running
from tests.support.secrets import random_secret
from tests.support.stepca import (
    MAIN_PROVISIONER,
    MISSING_OID_PROVISIONER,
    StepCa,
    StepCaBinaries,
    decode_ott,
)

pytestmark = pytest.mark.stepca

KeySource = Literal["json", "jwe"]
# For tests that build the backend alone: Settings needs a DB URL, the backend never uses it.
NO_DB = "postgresql+psycopg://unused:unused@127.0.0.1:9/unused"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    user_id: uuid.UUID
    peer_id: uuid.UUID
    peer_name: str
    grant_id: uuid.UUID


def broker_settings(
    db_url: str,
    ca: StepCa,
    *,
    provisioner: str = MAIN_PROVISIONER,
    key_source: KeySource = "json",
    password: str | None = None,
    service_secrets: dict[str, str] | None = None,
) -> Settings:
    prov = ca.provisioners[provisioner]
    key_settings: dict[str, Any]
    if key_source == "json":
        key_settings = {"stepca_provisioner_key_json": prov.key_json}
    else:
        key_settings = {
            "stepca_provisioner_encrypted_key": prov.encrypted_key,
            "stepca_provisioner_password": ca.password if password is None else password,
        }
    return Settings(
        backend="stepca",
        pki_dir=tempfile.mkdtemp(prefix="mosaic-test-pki-"),
        stepca_url=ca.ca_url,
        stepca_root_cert_path=str(ca.root_path),
        stepca_provisioner_name=provisioner,
        db={"url": db_url, "startup_wait_seconds": 0, "connect_timeout_seconds": 1},
        secrets=service_secrets or new_service_secrets(),
        ca_key_secret=random_secret(),
        **key_settings,
    )


def new_service_secrets() -> dict[str, str]:
    return {
        "gateway_secret": random_secret(),
        "proxy_secret": random_secret(),
        "service_token": random_secret(),
    }


@asynccontextmanager
async def broker(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(ca_broker.app.create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {settings.secrets.value('service_token')}"
        yield client


async def seed(db_url: str) -> Seed:
    """A user, an active peer and an active grant of that user to that peer."""
    engine = create_async_engine(db_url)
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            tag = secrets.token_hex(4)
            user = User(id=uuid.uuid4(), username=f"user-{tag}")
            peer = FederationPeer(
                id=uuid.uuid4(), name=f"peer-{tag}.federation.test", state=PeerState.ACTIVE
            )
            session.add_all([user, peer])
            await session.flush()
            grant = FederationGrant(
                id=uuid.uuid4(),
                subject_user_id=user.id,
                peer_id=peer.id,
                scope={"verbs": ["tasks.read"]},
                status=GrantStatus.ACTIVE,
            )
            session.add(grant)
            await session.commit()
            return Seed(user_id=user.id, peer_id=peer.id, peer_name=peer.name, grant_id=grant.id)
    finally:
        await engine.dispose()


async def certificate_rows(db_url: str) -> list[FederationCertificate]:
    engine = create_async_engine(db_url)
    try:
        async with AsyncSession(engine) as session:
            count = (
                await session.execute(select(func.count()).select_from(FederationCertificate))
            ).scalar_one()
            rows = list((await session.execute(select(FederationCertificate))).scalars())
            assert count == len(rows)
            return rows
    finally:
        await engine.dispose()


def sign_body(seed: Seed, *, common_name: str | None = None) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    return {
        "csr_pem": make_csr(key, common_name or seed.peer_name),
        "grant_id": str(seed.grant_id),
        "subject_user_id": str(seed.user_id),
        "peer_id": str(seed.peer_id),
    }


def issue_request(seed: Seed) -> IssueRequest:
    csr_pem = make_csr(ec.generate_private_key(ec.SECP256R1()), seed.peer_name)
    return IssueRequest(
        csr=validate_csr(csr_pem),
        csr_pem=csr_pem,
        peer_name=seed.peer_name,
        peer_id=seed.peer_id,
        grant_id=seed.grant_id,
        subject_user_id=seed.user_id,
        lifetime=timedelta(hours=1),
    )


def fake_seed() -> Seed:
    tag = secrets.token_hex(4)
    return Seed(uuid.uuid4(), uuid.uuid4(), f"peer-{tag}.federation.test", uuid.uuid4())


def stepca_root(ca: StepCa) -> x509.Certificate:
    return pki.load_pem_chain(ca.root_path.read_bytes())[0]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---------------------------------------------------------------------------------------------
# issuance through the broker
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_source", ["json", "jwe"])
async def test_sign_through_the_broker_issues_the_federation_profile(
    key_source: KeySource, stepca_server: StepCa, migrated_db_url: str
) -> None:
    s = await seed(migrated_db_url)
    settings = broker_settings(migrated_db_url, stepca_server, key_source=key_source)
    async with broker(settings) as client:
        response = await client.post("/sign", json={**sign_body(s), "ttl_seconds": 3600})
        ca_pem = (await client.get("/pki/ca.pem")).text
    assert response.status_code == 201, response.text
    body = response.json()
    leaf = pki.load_pem_chain(body["cert_pem"])[0]
    chain = pki.load_pem_chain(body["cert_chain_pem"])
    assert chain[0] == leaf
    root = stepca_root(stepca_server)

    identity = extract_federation_identity(leaf)
    assert identity.grant_id == s.grant_id
    assert identity.subject_user_id == s.user_id
    assert leaf.subject.rfc4514_string() == f"CN={s.peer_name}"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(san.value) == [
        x509.UniformResourceIdentifier(f"urn:mosaic:federation:peer:{s.peer_id}")
    ]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    pki.verify_client_certificate(leaf, chain[1:], [root])  # raises if it does not chain
    # The requested lifetime reaches step-ca ("notAfter"); step-ca backdates notBefore by 1 min.
    validity = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert abs(validity - timedelta(hours=1, minutes=1)) <= timedelta(seconds=2)

    rows = await certificate_rows(migrated_db_url)
    assert len(rows) == 1
    (row,) = rows
    assert row.serial == body["serial"] == pki.serial_hex(leaf)
    assert row.fingerprint_sha256 == body["fingerprint_sha256"] == pki.fingerprint_sha256(leaf)
    assert (row.backend, row.grant_id, row.peer_id) == ("stepca", s.grant_id, s.peer_id)

    # Published files: peers pin ca.pem to authenticate this gateway's TLS server, which the
    # local CA certifies, so step-ca's root is NOT in it; nginx verifies clients against
    # step-ca's root + intermediate (learnt at start from step-ca's TLS chain, since 0.19 has
    # no /intermediates endpoint).
    assert pki.cert_pem(root) not in ca_pem
    client_ca_path = Path(settings.pki_dir, "client-ca.pem")
    client_ca = pki.load_pem_chain(await asyncio.to_thread(client_ca_path.read_bytes))
    assert client_ca == [root, *chain[1:]]


async def test_missing_oid_template_is_refused_by_the_post_check_and_not_recorded(
    stepca_server: StepCa, migrated_db_url: str
) -> None:
    s = await seed(migrated_db_url)
    # The same service secrets for both brokers: they share the DB (and its sealed local CA).
    shared = new_service_secrets()
    settings = broker_settings(migrated_db_url, stepca_server, service_secrets=shared)
    async with broker(settings) as client:
        assert (await client.post("/sign", json=sign_body(s))).status_code == 201
    before = await certificate_rows(migrated_db_url)
    assert len(before) == 1

    settings = broker_settings(
        migrated_db_url,
        stepca_server,
        provisioner=MISSING_OID_PROVISIONER,
        service_secrets=shared,
    ).model_copy(update={"ca_key_secret": settings.ca_key_secret})
    async with broker(settings) as client:
        response = await client.post("/sign", json=sign_body(s))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "issuance_check_failed"
    after = await certificate_rows(migrated_db_url)
    assert [r.serial for r in after] == [r.serial for r in before]


async def test_certificate_cn_is_the_peer_name_whatever_the_csr_asks(
    stepca_server: StepCa, migrated_db_url: str
) -> None:
    """step-ca needs the token's sub to equal the CSR's CN, so sub carries the CSR's (checked)
    CN; the template takes the certificate's CN from the signed mosaic.peer_name."""
    s = await seed(migrated_db_url)
    async with broker(broker_settings(migrated_db_url, stepca_server)) as client:
        response = await client.post("/sign", json=sign_body(s, common_name="someone-else"))
    assert response.status_code == 201, response.text
    leaf = pki.load_pem_chain(response.json()["cert_pem"])[0]
    assert leaf.subject.rfc4514_string() == f"CN={s.peer_name}"
    assert len(await certificate_rows(migrated_db_url)) == 1


async def test_crl_is_not_available_in_stepca_mode(
    stepca_server: StepCa, migrated_db_url: str
) -> None:
    async with broker(broker_settings(migrated_db_url, stepca_server)) as client:
        response = await client.get("/pki/crl.pem")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "crl_not_available"


# ---------------------------------------------------------------------------------------------
# step-ca unavailable
# ---------------------------------------------------------------------------------------------


async def test_step_ca_down_answers_ca_unavailable_and_records_nothing(
    stepca_binaries: StepCaBinaries,
    tmp_path: Path,
    migrated_db_url: str,
) -> None:
    # A CA of its own: stopping the session's server would disturb the other tests.
    ca = stepca.init_ca(stepca_binaries, tmp_path / "down")
    stepca.start(ca, stepca_binaries)
    try:
        s = await seed(migrated_db_url)
        async with broker(broker_settings(migrated_db_url, ca)) as client:
            assert (await client.post("/sign", json=sign_body(s))).status_code == 201
            stepca.stop(ca)
            response = await client.post("/sign", json=sign_body(s))
            assert response.status_code == 503
            error = response.json()["error"]
            assert error["code"] == "ca_unavailable"
            assert ca.provisioners[MAIN_PROVISIONER].kid not in error["message"]
            assert len(await certificate_rows(migrated_db_url)) == 1

            stepca.start(ca, stepca_binaries)  # and it recovers without a broker restart
            assert (await client.post("/sign", json=sign_body(s))).status_code == 201
        assert len(await certificate_rows(migrated_db_url)) == 2
    finally:
        stepca.stop(ca)


async def test_create_fails_with_ca_unavailable_when_step_ca_is_not_listening(
    stepca_server: StepCa,
) -> None:
    settings = broker_settings(NO_DB, stepca_server)
    closed = settings.model_copy(
        update={"stepca_url": f"https://{stepca.STEPCA_HOST}:{stepca.free_port()}"}
    )
    with pytest.raises(CaUnavailable) as caught:
        await StepCaBackend.create(closed)
    assert caught.value.code == "ca_unavailable"
    assert caught.value.status_code == 503


# ---------------------------------------------------------------------------------------------
# provisioner key sources and JWE decryption
# ---------------------------------------------------------------------------------------------


def _secret_fragments(ca: StepCa) -> list[str]:
    jwk = json.loads(ca.provisioners[MAIN_PROVISIONER].key_json)
    encrypted = ca.provisioners[MAIN_PROVISIONER].encrypted_key
    return [ca.password, jwk["d"], *[part for part in encrypted.split(".") if len(part) > 8]]


def _assert_clean(exc: BaseException, ca: StepCa) -> None:
    text = f"{exc} {exc!r} {exc.args}"
    for fragment in _secret_fragments(ca):
        assert fragment not in text


async def test_both_key_sources_yield_the_same_key_and_kid(stepca_server: StepCa) -> None:
    prov = stepca_server.provisioners[MAIN_PROVISIONER]
    from_json = load_provisioner_jwk(prov.key_json)
    plaintext = decrypt_provisioner_jwe(prov.encrypted_key, stepca_server.password.encode())
    from_jwe = load_provisioner_jwk(plaintext)
    assert from_json.kid == from_jwe.kid == prov.kid
    assert from_json.public_key.public_numbers() == from_jwe.public_key.public_numbers()
    assert prov.kid in repr(from_json)
    assert json.loads(prov.key_json)["d"] not in repr(from_json)

    sources: tuple[KeySource, ...] = ("json", "jwe")
    for source in sources:
        backend = await StepCaBackend.create(
            broker_settings(NO_DB, stepca_server, key_source=source)
        )
        try:
            assert backend.intermediates_pem()  # learnt from the TLS handshake at start
            issued = await backend.issue(issue_request(fake_seed()))
            assert pki.load_pem_chain(issued.chain_pem) == pki.load_pem_chain(
                backend.intermediates_pem()
            )
        finally:
            await backend.aclose()


def _tamper_part(compact: str, index: int) -> str:
    parts = compact.split(".")
    raw = bytearray(unb64url(parts[index]))
    raw[0] ^= 0x01
    parts[index] = b64url(bytes(raw))
    return ".".join(parts)


def _with_header(compact: str, **changes: Any) -> str:
    parts = compact.split(".")
    header = json.loads(unb64url(parts[0]))
    header.update(changes)
    parts[0] = b64url(json.dumps(header).encode())
    return ".".join(parts)


async def test_jwe_decryption_refusals_name_the_rule_and_leak_nothing(
    stepca_server: StepCa,
) -> None:
    ca = stepca_server
    compact = ca.provisioners[MAIN_PROVISIONER].encrypted_key
    password = ca.password.encode()
    cases: dict[str, tuple[str, bytes, str]] = {
        "wrong password": (compact, b"not-" + password, "wrong password or corrupted key"),
        "tampered tag": (_tamper_part(compact, 4), password, "wrong password or corrupted key"),
        "tampered ciphertext": (
            _tamper_part(compact, 3),
            password,
            "wrong password or corrupted key",
        ),
        "tampered header (aad)": (
            _with_header(compact, kid="x"),
            password,
            "wrong password or corrupted key",
        ),
        "alg other than PBES2-HS256+A128KW": (
            _with_header(compact, alg="PBES2-HS512+A256KW"),
            password,
            "must use alg PBES2-HS256+A128KW and enc A256GCM",
        ),
        "alg dir": (_with_header(compact, alg="dir"), password, "must use alg"),
        "enc other than A256GCM": (
            _with_header(compact, enc="A128CBC-HS256"),
            password,
            "must use alg",
        ),
        "p2c too large": (_with_header(compact, p2c=50_000_000), password, "p2c must be"),
        "p2c too small": (_with_header(compact, p2c=10), password, "p2c must be"),
        "zip": (_with_header(compact, zip="DEF"), password, "unsupported header"),
        "four parts": (compact.rsplit(".", 1)[0], password, "not a JWE compact"),
    }
    for name, (token, secret, expected) in cases.items():
        with pytest.raises(ProvisionerKeyError) as caught:
            decrypt_provisioner_jwe(token, secret)
        assert expected in str(caught.value), name
        _assert_clean(caught.value, ca)
        # Nothing chained either: a traceback must not show the underlying crypto error.
        assert caught.value.__cause__ is None, name
        assert caught.value.__context__ is None or caught.value.__suppress_context__, name

    # The same through the broker's start-up path: the wrong password stops it, cleanly.
    settings = broker_settings(NO_DB, ca, key_source="jwe", password="wrong-" + ca.password)
    with pytest.raises(ProvisionerKeyError) as caught:
        await StepCaBackend.create(settings)
    _assert_clean(caught.value, ca)
    assert "wrong-" + ca.password not in str(caught.value)


def test_jwk_checks(stepca_server: StepCa) -> None:
    prov = stepca_server.provisioners[MAIN_PROVISIONER]
    jwk = json.loads(prov.key_json)
    other = json.loads(stepca_server.provisioners[MISSING_OID_PROVISIONER].key_json)
    bad = {
        "kid not the thumbprint": ({**jwk, "kid": other["kid"]}, "kid"),
        "d of another key": ({**jwk, "d": other["d"]}, "does not match"),
        "public only": ({k: v for k, v in jwk.items() if k != "d"}, "no private part"),
        "P-384": ({**jwk, "crv": "P-384"}, "P-256"),
        "RS256": ({**jwk, "alg": "RS256"}, "ES256"),
    }
    for name, (value, expected) in bad.items():
        with pytest.raises(ProvisionerKeyError) as caught:
            load_provisioner_jwk(json.dumps(value))
        assert expected in str(caught.value), name
        assert jwk["d"] not in str(caught.value)
        assert other["d"] not in str(caught.value)
    without_kid = {k: v for k, v in jwk.items() if k != "kid"}
    assert load_provisioner_jwk(json.dumps(without_kid)).kid == prov.kid


# ---------------------------------------------------------------------------------------------
# the one-time token
# ---------------------------------------------------------------------------------------------


async def test_one_time_token_header_and_claims(
    stepca_server: StepCa, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ca_broker"):
        backend = await StepCaBackend.create(broker_settings(NO_DB, stepca_server))
    # Start-up found our root, the intermediates, our provisioner with disableRenewal: no warning.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    try:
        s = fake_seed()
        request = issue_request(s)
        first, second = backend.mint_sign_token(request), backend.mint_sign_token(request)
    finally:
        await backend.aclose()
    prov = stepca_server.provisioners[MAIN_PROVISIONER]
    public_key = load_provisioner_jwk(prov.key_json).public_key
    header, claims = decode_ott(first, public_key)  # verifies the raw r||s ES256 signature
    _, claims2 = decode_ott(second, public_key)

    assert len(unb64url(first.split(".")[2])) == 64  # raw r || s, not DER
    assert header == {"alg": "ES256", "kid": prov.kid, "typ": "JWT"}
    assert claims["iss"] == MAIN_PROVISIONER
    assert claims["sub"] == s.peer_name
    assert claims["aud"] == f"{stepca_server.ca_url}/1.0/sign"
    assert claims["iat"] == claims["nbf"]
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert len(claims["jti"]) == 32
    assert int(claims["jti"], 16) >= 0
    assert claims["jti"] != claims2["jti"]
    assert claims["sans"] == [f"urn:mosaic:federation:peer:{s.peer_id}"]
    assert claims["mosaic"] == {
        "grant_id": str(s.grant_id),
        "subject_user_id": str(s.user_id),
        "peer_id": str(s.peer_id),
        "peer_name": s.peer_name,
    }
    ids = [v for k, v in claims["mosaic"].items() if k != "peer_name"]
    assert all(v == v.lower() and len(v) == 36 for v in ids)
    assert set(claims) == {"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "sans", "mosaic"}


async def test_a_captured_token_cannot_be_replayed(
    stepca_server: StepCa,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = await StepCaBackend.create(broker_settings(NO_DB, stepca_server))
    captured: list[str] = []
    mint = backend.mint_sign_token

    def recording_mint(request: IssueRequest, *, now: int | None = None) -> str:
        token = mint(request, now=now)
        captured.append(token)
        return token

    monkeypatch.setattr(backend, "mint_sign_token", recording_mint)
    s = fake_seed()
    try:
        await backend.issue(issue_request(s))
    finally:
        await backend.aclose()
    assert len(captured) == 1

    # An attacker who captured the token posts it straight to step-ca with their own CSR.
    attacker_csr = make_csr(ec.generate_private_key(ec.SECP256R1()), s.peer_name)
    async with httpx.AsyncClient(verify=stepca_server.ssl_context()) as client:
        response = await client.post(
            f"{stepca_server.ca_url}/1.0/sign", json={"csr": attacker_csr, "ott": captured[0]}
        )
    assert response.status_code == 401
    assert "crt" not in response.json()

    # The broker's own refusal of a replay (same token again through the backend) is a 502
    # ca_refused that shows the status code only, neither the token nor step-ca's body.
    replaying = await StepCaBackend.create(broker_settings(NO_DB, stepca_server))
    monkeypatch.setattr(replaying, "mint_sign_token", lambda request, *, now=None: captured[0])
    with caplog.at_level(logging.INFO, logger="ca_broker"):
        try:
            with pytest.raises(CaRefused) as caught:
                await replaying.issue(issue_request(s))
        finally:
            await replaying.aclose()
    assert (caught.value.status_code, caught.value.code) == (502, "ca_refused")
    assert caught.value.message == "the certificate authority refused the request (HTTP 401)"
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "401" in logged
    assert captured[0] not in logged
    assert captured[0].split(".")[2] not in logged
    assert "authorization" not in logged.lower()  # step-ca's body is not logged


async def test_intermediates_fall_back_to_the_first_sign_response(
    stepca_server: StepCa, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a Python that exposes no TLS chain: start without intermediates, learn them on sign.
    monkeypatch.setattr(stepca_backend, "_tls_verified_chain", lambda response: [])
    backend = await StepCaBackend.create(broker_settings(NO_DB, stepca_server))
    try:
        assert backend.intermediates_pem() == ""
        issued = await backend.issue(issue_request(fake_seed()))
    finally:
        await backend.aclose()
    intermediates = pki.load_pem_chain(backend.intermediates_pem())
    assert intermediates == pki.load_pem_chain(issued.chain_pem)
    assert len(intermediates) == 1
    intermediates[0].verify_directly_issued_by(stepca_root(stepca_server))


async def test_create_refuses_a_key_step_ca_does_not_know_for_the_provisioner(
    stepca_server: StepCa,
) -> None:
    settings = broker_settings(NO_DB, stepca_server).model_copy(
        update={"stepca_provisioner_name": MISSING_OID_PROVISIONER}  # but the main key
    )
    with pytest.raises(StepCaConfigError, match="kid does not match"):
        await StepCaBackend.create(settings)


async def test_create_refuses_a_provisioner_that_allows_renewal(
    stepca_binaries: stepca.StepCaBinaries, tmp_path: Path
) -> None:
    """A renewal would copy the OIDs into a certificate no broker recorded: refuse to run
    against such a provisioner unless the operator accepts it explicitly."""
    ca = stepca.init_ca(stepca_binaries, tmp_path, disable_renewal=False)
    stepca.start(ca, stepca_binaries)
    try:
        settings = broker_settings(NO_DB, ca)
        with pytest.raises(StepCaConfigError, match="allows renewal"):
            await StepCaBackend.create(settings)
        accepted = await StepCaBackend.create(
            settings.model_copy(update={"stepca_allow_renewal": True})
        )
        await accepted.aclose()
    finally:
        stepca.stop(ca)
