"""The post-issuance check: whatever the backend, a certificate leaves the broker only if it says
exactly what we asked for. Guards against a backend (or its template) silently dropping or
altering the federation OIDs, swapping the key, or chaining somewhere else."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from ca_broker.backends import IssuedChain, IssueRequest
from fedcore import pki
from fedcore.errors import UpstreamUnavailable
from fedcore.federation_oids import MalformedFederationIdentity, extract_federation_identity


class IssuanceCheckFailed(UpstreamUnavailable):
    status_code = 502
    default_code = "issuance_check_failed"


@dataclass(frozen=True)
class CheckedCertificate:
    cert: x509.Certificate
    cert_pem: str
    chain_pem: str


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_issued(
    issued: IssuedChain, request: IssueRequest, roots: list[x509.Certificate]
) -> CheckedCertificate:
    try:
        certs = pki.load_pem_chain(issued.cert_pem)
        intermediates = pki.load_pem_chain(issued.chain_pem) if issued.chain_pem.strip() else []
    except ValueError:
        raise IssuanceCheckFailed("backend returned an unparseable certificate") from None
    if len(certs) != 1:
        raise IssuanceCheckFailed("backend returned more than one leaf certificate")
    cert = certs[0]
    try:
        identity = extract_federation_identity(cert)
    except MalformedFederationIdentity as exc:
        raise IssuanceCheckFailed(
            f"issued certificate lacks the federation identity: {exc.reason}"
        ) from None
    if identity.grant_id != request.grant_id or identity.subject_user_id != request.subject_user_id:
        raise IssuanceCheckFailed("issued certificate carries different federation values")
    if _spki(cert.public_key()) != _spki(request.csr.public_key):
        raise IssuanceCheckFailed("issued certificate does not hold the CSR's public key")
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    if basic.ca:
        raise IssuanceCheckFailed("issued certificate is a CA certificate")
    try:
        pki.verify_client_certificate(cert, intermediates, roots)
    except pki.ChainVerificationError:
        raise IssuanceCheckFailed("issued certificate does not chain to the CA bundle") from None
    return CheckedCertificate(cert=cert, cert_pem=issued.cert_pem, chain_pem=issued.chain_pem)
