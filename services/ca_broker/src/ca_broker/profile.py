"""The federation client-certificate profile (DESIGN §4), built by the local backend.

Every extension is built here from the broker's own inputs; nothing is copied from the CSR except
its public key (which ``fedcore.csr.validate_csr`` has already checked is P-256).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcore.federation_oids import add_federation_extensions
from fedcore.pki import CLOCK_SKEW


def peer_uri(peer_id: uuid.UUID) -> str:
    """The SAN every peer certificate carries (the chain verifier requires a SAN)."""
    return f"urn:mosaic:federation:peer:{peer_id}"


def build_federation_certificate(
    *,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_cert: x509.Certificate,
    peer_name: str,
    peer_id: uuid.UUID,
    grant_id: uuid.UUID,
    subject_user_id: uuid.UUID,
    lifetime: timedelta,
    now: datetime,
) -> x509.Certificate:
    issuer_public = issuer_cert.public_key()
    assert isinstance(issuer_public, ec.EllipticCurvePublicKey)
    not_after = min(now + lifetime, issuer_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, peer_name)]))
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(peer_uri(peer_id))]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False
        )
    )
    builder = add_federation_extensions(builder, grant_id, subject_user_id)
    return builder.sign(issuer_key, hashes.SHA256())
