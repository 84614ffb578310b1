"""Certificate building blocks (pyca/cryptography builder API) shared by the CA and the tests.

Everything here is pure: keys and certificates in, certificates and PEM out. The federation
client-certificate profile lives in the ca-broker; this module holds the CA hierarchy, the TLS
server certificate for nginx, CRLs, fingerprints and chain verification.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

ROOT_LIFETIME = timedelta(days=3650)
INTERMEDIATE_LIFETIME = timedelta(days=1825)
SERVER_LIFETIME = timedelta(days=90)
# Certificates are back-dated slightly so a peer whose clock runs a little behind accepts them.
CLOCK_SKEW = timedelta(minutes=5)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("expected an EC private key")
    return key


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def load_pem_chain(pem: str | bytes) -> list[x509.Certificate]:
    data = pem.encode() if isinstance(pem, str) else pem
    return x509.load_pem_x509_certificates(data)


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def bundle_root_fingerprint(bundle_pem: bytes | str) -> str:
    """The CA pin carried in enrollment URLs: SHA-256 (hex) of the DER of the first self-signed
    certificate in a PEM bundle (the first certificate if none is self-signed)."""
    certificates = load_pem_chain(bundle_pem)
    roots = [c for c in certificates if c.subject == c.issuer]
    return fingerprint_sha256((roots or certificates)[0])


class PinMismatch(ValueError):
    """A CA bundle does not hold exactly the pinned root (and what chains to it)."""


def pinned_bundle(bundle_pem: bytes | str, pin: str) -> str:
    """The part of a CA bundle a pin vouches for: the one self-signed certificate whose SHA-256
    (DER) is ``pin``, plus the certificates it directly issued. A bundle holding any *other*
    self-signed certificate is refused: a pin must identify the whole trust set, or an attacker
    could append their own root behind the genuine one (it would pass a first-root check and then
    be trusted for TLS and chain verification alike)."""
    try:
        certificates = load_pem_chain(bundle_pem)
    except ValueError:
        raise PinMismatch("the CA bundle does not parse") from None
    roots = [c for c in certificates if c.subject == c.issuer]
    pinned = [c for c in roots if fingerprint_sha256(c) == pin]
    if len(pinned) != 1 or len(roots) != 1:
        raise PinMismatch("the CA bundle is not exactly the pinned root")
    root = pinned[0]
    kept = [root]
    for cert in certificates:
        if cert is root:
            continue
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            raise PinMismatch(
                "the CA bundle holds a certificate the pinned root did not issue"
            ) from None
        kept.append(cert)
    return "".join(cert_pem(c) for c in kept)


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_public_key: ec.EllipticCurvePublicKey,
    lifetime: timedelta,
    path_length: int | None,
    now: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False
        )
    )


@dataclass(frozen=True)
class CaHierarchy:
    root_key: ec.EllipticCurvePrivateKey
    root_cert: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey
    intermediate_cert: x509.Certificate

    @property
    def bundle_pem(self) -> str:
        """What peers and nginx trust: the root (the intermediate comes with each chain)."""
        return cert_pem(self.root_cert)

    @property
    def chain_pem(self) -> str:
        return cert_pem(self.intermediate_cert)


def generate_ca_hierarchy(gateway_name: str, now: datetime | None = None) -> CaHierarchy:
    now = now or utcnow()
    gateway_name = gateway_name[:40]  # a CN holds at most 64 characters
    root_key = new_ec_key()
    root_name = _name(f"{gateway_name} Federation Root CA", "Mosaic Federation")
    root_cert = _ca_builder(
        root_name, root_name, root_key.public_key(), root_key.public_key(), ROOT_LIFETIME, 1, now
    ).sign(root_key, hashes.SHA256())
    intermediate_key = new_ec_key()
    intermediate_name = _name(f"{gateway_name} Federation Issuing CA", "Mosaic Federation")
    intermediate_cert = _ca_builder(
        intermediate_name,
        root_name,
        intermediate_key.public_key(),
        root_key.public_key(),
        INTERMEDIATE_LIFETIME,
        0,
        now,
    ).sign(root_key, hashes.SHA256())
    return CaHierarchy(root_key, root_cert, intermediate_key, intermediate_cert)


def _san_entries(hosts: Sequence[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def issue_server_certificate(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_cert: x509.Certificate,
    hosts: Sequence[str],
    lifetime: timedelta = SERVER_LIFETIME,
    now: datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The TLS server certificate nginx presents on the public listener."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host")
    now = now or utcnow()
    key = new_ec_key()
    issuer_public = issuer_cert.public_key()
    assert isinstance(issuer_public, ec.EllipticCurvePublicKey)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + lifetime, issuer_cert.not_valid_after_utc))
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
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_san_entries(hosts)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return key, cert


@dataclass(frozen=True)
class RevokedEntry:
    serial: int
    revoked_at: datetime
    reason: x509.ReasonFlags = x509.ReasonFlags.unspecified


def build_crl(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_cert: x509.Certificate,
    revoked: Sequence[RevokedEntry],
    crl_number: int,
    validity: timedelta,
    now: datetime | None = None,
) -> x509.CertificateRevocationList:
    now = now or utcnow()
    issuer_public = issuer_cert.public_key()
    assert isinstance(issuer_public, ec.EllipticCurvePublicKey)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + validity)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False
        )
    )
    for entry in revoked:
        revoked_cert = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
        )
        if entry.reason is not x509.ReasonFlags.unspecified:
            revoked_cert = revoked_cert.add_extension(x509.CRLReason(entry.reason), critical=False)
        builder = builder.add_revoked_certificate(revoked_cert.build())
    return builder.sign(issuer_key, hashes.SHA256())


class ChainVerificationError(Exception):
    """The certificate does not chain to the trusted roots, is outside its validity window, or
    lacks the clientAuth usage. The message is safe to log (no key material)."""


def verify_client_certificate(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    at: datetime | None = None,
) -> None:
    """Verify a client certificate with ``cryptography.x509.verification`` (RFC 5280 path
    building, validity at ``at``, EKU clientAuth). Raises :class:`ChainVerificationError`."""
    if not roots:
        raise ChainVerificationError("no trusted roots configured")
    builder = PolicyBuilder().store(Store(list(roots)))
    if at is not None:
        builder = builder.time(at)
    verifier = builder.build_client_verifier()
    try:
        verifier.verify(leaf, list(intermediates))
    except Exception as exc:  # VerificationError and friends; the text names the failed rule
        raise ChainVerificationError(str(exc)) from None
