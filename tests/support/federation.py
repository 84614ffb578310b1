"""Peers with real certificates for the verbs tests.

``enroll`` goes the real way (token → enrollment through nginx → the gateway's CA). For the
refusal paths that need certificates the broker would never issue (expired, OID missing or
doubled, naming another grant), ``gateway_ca`` unseals the gateway's own CA from its database
with its gateway secret — the same keys, the same profile code — and ``record_certificate``
registers such a certificate the way the broker would.
"""

from __future__ import annotations

import json
import ssl
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from ca_broker.keystore import load_or_create_ca
from fedcore import pki
from fedcore.csr import make_csr
from fedcore.dev_seed import SeededWorld, seed
from fedcore.models import FederationCertificate
from fedcore.sealing import Sealer
from tests.support.factories import GrantFixture, create_enrollment_token, create_grant_fixture
from tests.support.stack import Gateway


@dataclass(frozen=True)
class PeerIdentity:
    cert_path: Path
    key_path: Path
    grant: GrantFixture
    cert: x509.Certificate

    def ssl_context(self, gw: Gateway) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=gw.ca_bundle)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client(self, gw: Gateway) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"{gw.public_url}/api/federation/v1", verify=self.ssl_context(gw), timeout=30
        )


def write_identity(key: ec.EllipticCurvePrivateKey, chain_pem: str) -> tuple[Path, Path]:
    folder = Path(tempfile.mkdtemp(prefix="mosaic-test-peer-"))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_text(chain_pem)
    key_path.write_bytes(pki.private_key_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


async def seed_world(database_url: str) -> SeededWorld:
    engine = create_async_engine(database_url)
    try:
        async with async_sessionmaker(engine)() as session:
            world = await seed(session, prefix=f"{uuid.uuid4().hex[:6]}-")
            await session.commit()
            return world
    finally:
        await engine.dispose()


async def enroll(gw: Gateway, grant: GrantFixture) -> PeerIdentity:
    """Redeem a fresh token for ``grant`` through nginx; the grant becomes active."""
    token = await create_enrollment_token(gw.database_url, grant)
    key = ec.generate_private_key(ec.SECP256R1())
    async with httpx.AsyncClient(base_url=gw.public_url, verify=gw.tls_context(), timeout=30) as c:
        response = await c.post(
            f"/api/federation/v1/enrollment/{token}", json={"csr_pem": make_csr(key, "peer")}
        )
    assert response.status_code == 201, response.text
    body = response.json()
    cert_path, key_path = write_identity(key, body["cert_chain_pem"])
    return PeerIdentity(cert_path, key_path, grant, pki.load_pem_chain(body["cert_pem"])[0])


async def enrolled_peer(
    gw: Gateway, scope: dict[str, Any], user_id: uuid.UUID | None = None
) -> PeerIdentity:
    grant = await create_grant_fixture(gw.database_url, scope=scope, user_id=user_id)
    return await enroll(gw, grant)


async def gateway_ca(gw: Gateway) -> pki.CaHierarchy:
    secrets: dict[str, str] = json.loads((gw.spec.state_dir / "secrets.json").read_text())
    engine = create_async_engine(gw.database_url)
    try:
        hierarchy, created = await load_or_create_ca(
            async_sessionmaker(engine), Sealer(secrets["ca_key_secret"]), gw.name
        )
    finally:
        await engine.dispose()
    assert not created
    return hierarchy


async def record_certificate(
    gw: Gateway, cert: x509.Certificate, grant_id: uuid.UUID, peer_id: uuid.UUID
) -> None:
    engine = create_async_engine(gw.database_url)
    try:
        async with async_sessionmaker(engine)() as session:
            session.add(
                FederationCertificate(
                    serial=pki.serial_hex(cert),
                    grant_id=grant_id,
                    peer_id=peer_id,
                    fingerprint_sha256=pki.fingerprint_sha256(cert),
                    subject_cn="test",
                    backend="local",
                    not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc,
                )
            )
            await session.commit()
    finally:
        await engine.dispose()
