"""Certificates the broker would never issue, signed by a real CA key, for the refusal tests:
expired ones, ones missing or doubling a federation OID, ones with a malformed value, ones naming
another grant. Built with the cryptography builder; the doubled-OID one is re-signed by hand
(the builder refuses duplicate extensions) with a plain DER re-assembly."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca_broker.profile import peer_uri
from fedcore import pki
from fedcore.federation_oids import (
    GRANT_ID_OID,
    SUBJECT_USER_ID_OID,
    der_encode_oid,
    encode_uuid_utf8string,
)

PLACEHOLDER_OID = x509.ObjectIdentifier("1.3.6.1.4.1.99999.9")


def custom_client_cert(
    ca: pki.CaHierarchy,
    key: ec.EllipticCurvePrivateKey,
    *,
    peer_id: uuid.UUID,
    grant_value: bytes | None,
    subject_value: bytes | None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    extra: list[x509.ExtensionType] | None = None,
) -> x509.Certificate:
    """A leaf with the federation profile, but the OID values are raw DER chosen by the test
    (``None`` leaves that extension out)."""
    now = pki.utcnow()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd-peer")]))
        .issuer_name(ca.intermediate_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(peer_uri(peer_id))]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.intermediate_key.public_key()),
            critical=False,
        )
    )
    if grant_value is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(GRANT_ID_OID, grant_value), critical=False
        )
    if subject_value is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(SUBJECT_USER_ID_OID, subject_value), critical=False
        )
    for extension in extra or []:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(ca.intermediate_key, hashes.SHA256())


def valid_values(grant_id: uuid.UUID, subject_user_id: uuid.UUID) -> tuple[bytes, bytes]:
    return encode_uuid_utf8string(grant_id), encode_uuid_utf8string(subject_user_id)


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _read_header(data: bytes, offset: int) -> tuple[int, int]:
    """(start of contents, length) of the TLV at ``offset``."""
    first = data[offset + 1]
    if first < 0x80:
        return offset + 2, first
    count = first & 0x7F
    return offset + 2 + count, int.from_bytes(data[offset + 2 : offset + 2 + count], "big")


def with_duplicate_grant_oid(
    ca: pki.CaHierarchy,
    key: ec.EllipticCurvePrivateKey,
    *,
    peer_id: uuid.UUID,
    grant_id: uuid.UUID,
    subject_user_id: uuid.UUID,
) -> x509.Certificate:
    """A correctly signed certificate carrying the grant-id extension twice."""
    grant_value, subject_value = valid_values(grant_id, subject_user_id)
    template = custom_client_cert(
        ca,
        key,
        peer_id=peer_id,
        grant_value=grant_value,
        subject_value=subject_value,
        extra=[x509.UnrecognizedExtension(PLACEHOLDER_OID, grant_value)],
    )
    placeholder, target = der_encode_oid(PLACEHOLDER_OID), der_encode_oid(GRANT_ID_OID)
    assert len(placeholder) == len(target)
    tbs = template.tbs_certificate_bytes
    assert tbs.count(placeholder) == 1
    new_tbs = tbs.replace(placeholder, target)

    der = template.public_bytes(serialization.Encoding.DER)
    contents_start, _ = _read_header(der, 0)
    alg_start = contents_start + len(tbs)
    alg_contents, alg_length = _read_header(der, alg_start)
    algorithm = der[alg_start : alg_contents + alg_length]
    signature = ca.intermediate_key.sign(new_tbs, ec.ECDSA(hashes.SHA256()))
    bit_string = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    body = new_tbs + algorithm + bit_string
    return x509.load_der_x509_certificate(b"\x30" + _der_length(len(body)) + body)
