"""Test PKI generated at run time (no key is ever committed): a CA hierarchy like the broker's,
and federation client certificates issued with the broker's own profile code."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ca_broker.profile import build_federation_certificate
from fedcore import pki


@dataclass(frozen=True)
class ClientIdentity:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    chain_pem: str  # leaf + intermediate

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        cert_path = directory / f"{name}.pem"
        key_path = directory / f"{name}.key"
        cert_path.write_text(self.chain_pem)
        key_path.write_bytes(pki.private_key_pem(self.key))
        key_path.chmod(0o600)
        return cert_path, key_path


def issue_client(
    hierarchy: pki.CaHierarchy,
    *,
    peer_name: str = "peer-b",
    peer_id: uuid.UUID | None = None,
    grant_id: uuid.UUID | None = None,
    subject_user_id: uuid.UUID | None = None,
    lifetime: timedelta = timedelta(hours=1),
    now: datetime | None = None,
) -> ClientIdentity:
    key = pki.new_ec_key()
    cert = build_federation_certificate(
        public_key=key.public_key(),
        issuer_key=hierarchy.intermediate_key,
        issuer_cert=hierarchy.intermediate_cert,
        peer_name=peer_name,
        peer_id=peer_id or uuid.uuid4(),
        grant_id=grant_id or uuid.uuid4(),
        subject_user_id=subject_user_id or uuid.uuid4(),
        lifetime=lifetime,
        now=now or pki.utcnow(),
    )
    return ClientIdentity(key, cert, pki.cert_pem(cert) + pki.cert_pem(hierarchy.intermediate_cert))


def write_server_pki(hierarchy: pki.CaHierarchy, directory: Path, host: str) -> dict[str, Path]:
    """Files nginx needs: server cert+chain, key, client CA bundle, and an empty CRL pair."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = pki.issue_server_certificate(
        hierarchy.intermediate_key, hierarchy.intermediate_cert, [host]
    )
    paths = {
        "server_cert": directory / "server.pem",
        "server_key": directory / "server.key",
        "client_ca": directory / "client-ca.pem",
        "bundle": directory / "ca.pem",
    }
    paths["server_cert"].write_text(pki.cert_pem(cert) + pki.cert_pem(hierarchy.intermediate_cert))
    paths["server_key"].write_bytes(pki.private_key_pem(key))
    paths["server_key"].chmod(0o600)
    both = pki.cert_pem(hierarchy.root_cert) + pki.cert_pem(hierarchy.intermediate_cert)
    paths["client_ca"].write_text(both)
    paths["bundle"].write_text(both)
    return paths
