"""The post-issuance check: whatever the backend, a certificate leaves the broker only if it says
exactly what we asked for. Guards against a backend (or its template) silently dropping or
altering the federation OIDs, swapping the key, or chaining somewhere else."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from ca_broker.backends import IssuedChain, IssueRequest
from ca_broker.profile import peer_uri
from fedcore import pki
from fedcore.errors import UpstreamUnavailable
from fedcore.federation_oids import (
    GRANT_ID_OID,
    SUBJECT_USER_ID_OID,
    MalformedFederationIdentity,
    extract_federation_identity,
)

# step-ca's own "provisioner" extension (which provisioner issued the certificate).
STEPCA_PROVISIONER_OID = x509.ObjectIdentifier("1.3.6.1.4.1.37476.9000.64.1")


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
    _check_profile(cert, request)
    try:
        pki.verify_client_certificate(cert, intermediates, roots)
    except pki.ChainVerificationError:
        raise IssuanceCheckFailed("issued certificate does not chain to the CA bundle") from None
    return CheckedCertificate(cert=cert, cert_pem=issued.cert_pem, chain_pem=issued.chain_pem)


# Extensions a federation certificate may carry; step-ca adds its provisioner extension.
_ALLOWED_EXTENSIONS = {
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    GRANT_ID_OID,
    SUBJECT_USER_ID_OID,
    STEPCA_PROVISIONER_OID,
}
# Backdating and clock skew allowance on top of the requested lifetime.
_LIFETIME_SLACK = timedelta(minutes=10)


def _check_profile(cert: x509.Certificate, request: IssueRequest) -> None:
    """The rest of DESIGN §4, whatever the backend's template says."""
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        raise IssuanceCheckFailed("issued certificate lacks a profile extension") from None
    if basic.ca:
        raise IssuanceCheckFailed("issued certificate is a CA certificate")
    if not usage.digital_signature or usage.key_cert_sign or usage.crl_sign:
        raise IssuanceCheckFailed("issued certificate has the wrong key usage")
    if list(eku) != [ExtendedKeyUsageOID.CLIENT_AUTH]:
        raise IssuanceCheckFailed("issued certificate has the wrong extended key usage")
    if list(san) != [x509.UniformResourceIdentifier(peer_uri(request.peer_id))]:
        raise IssuanceCheckFailed("issued certificate names other subjects")
    if cert.subject != x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, request.peer_name)]):
        raise IssuanceCheckFailed("issued certificate has another subject")
    for extension in cert.extensions:
        if extension.oid not in _ALLOWED_EXTENSIONS:
            raise IssuanceCheckFailed("issued certificate carries an unexpected extension")
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if lifetime > request.lifetime + _LIFETIME_SLACK:
        raise IssuanceCheckFailed("issued certificate outlives the requested lifetime")
