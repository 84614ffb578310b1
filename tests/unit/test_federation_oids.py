"""Unit tests for the federation OID codec and certificate identity extraction."""

from __future__ import annotations

import datetime
import functools
import uuid
import warnings
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcore.federation_oids import (
    FEDERATION_OIDS,
    GRANT_ID_OID,
    REASONS,
    SUBJECT_USER_ID_OID,
    FederationIdentity,
    MalformedFederationIdentity,
    MalformedFederationValue,
    _read_tlv,
    add_federation_extensions,
    decode_uuid_utf8string,
    der_encode_oid,
    encode_uuid_utf8string,
    extract_federation_identity,
    federation_identity_from_extensions,
)

KNOWN_UUID = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e")
KNOWN_DER = b"\x0c\x24" + b"0f8fad5b-d9cb-469f-a165-70867728950e"
GRANT = uuid.UUID("6f1c1f0e-8d0a-4a57-9b55-3c2f0b0f9a11")
SUBJECT = uuid.UUID("a0e5c3a4-2b7e-4b8e-8f43-9f2b6a1d7c22")
PLACEHOLDER_OID = x509.ObjectIdentifier("1.3.6.1.4.1.99999.3")

# Ed25519: signatures are always 64 bytes, which lets the duplicate-extension test re-sign an
# edited TBS and splice the new signature in without re-encoding any outer length.
CA_KEY = ed25519.Ed25519PrivateKey.generate()
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "federation-test")])


def _utf8string(content: bytes) -> bytes:
    assert len(content) < 0x80
    return bytes([0x0C, len(content)]) + content


def _base_builder() -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(NAME)
        .issuer_name(NAME)
        .public_key(CA_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(minutes=10))
    )


def _cert(extensions: list[tuple[x509.ObjectIdentifier, bytes, bool]]) -> x509.Certificate:
    builder = _base_builder()
    for oid, value, critical in extensions:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=critical)
    return builder.sign(CA_KEY, None)


def _cert_with_duplicate(oid: x509.ObjectIdentifier) -> x509.Certificate:
    """A correctly self-signed certificate carrying ``oid`` twice.

    cryptography's CertificateBuilder refuses duplicate extensions, so we build a certificate
    with a placeholder OID of the same encoded length, rewrite that OID in the TBS bytes, sign
    the new TBS with the same Ed25519 key and splice TBS and signature into the certificate.
    """
    duplicate_value = encode_uuid_utf8string(uuid.uuid4())
    builder = add_federation_extensions(_base_builder(), GRANT, SUBJECT).add_extension(
        x509.UnrecognizedExtension(PLACEHOLDER_OID, duplicate_value), critical=False
    )
    original = builder.sign(CA_KEY, None)
    placeholder, target = der_encode_oid(PLACEHOLDER_OID), der_encode_oid(oid)
    assert len(placeholder) == len(target)
    tbs = original.tbs_certificate_bytes
    assert tbs.count(placeholder) == 1
    new_tbs = tbs.replace(placeholder, target)
    der = original.public_bytes(serialization.Encoding.DER)
    assert der.count(tbs) == 1
    assert der.endswith(original.signature)
    assert len(original.signature) == 64
    new_der = der.replace(tbs, new_tbs)[:-64] + CA_KEY.sign(new_tbs)
    cert = x509.load_der_x509_certificate(new_der)
    cert.verify_directly_issued_by(cert)  # really signed, not just a mangled blob
    return cert


def _reason(cert: x509.Certificate) -> str:
    with pytest.raises(MalformedFederationIdentity) as info:
        extract_federation_identity(cert)
    assert info.value.code == "client_cert_malformed"
    assert info.value.status_code == 401
    assert info.value.reason in REASONS
    assert info.value.message.endswith(info.value.reason)
    return info.value.reason


def _value_error(der: Any) -> str:
    with pytest.raises(MalformedFederationValue) as info:
        decode_uuid_utf8string(der)
    return str(info.value)


# --------------------------------------------------------------------------------------------
# OIDs
# --------------------------------------------------------------------------------------------


def test_oids_are_the_issued_ones() -> None:
    assert GRANT_ID_OID.dotted_string == "1.3.6.1.4.1.99999.1"
    assert SUBJECT_USER_ID_OID.dotted_string == "1.3.6.1.4.1.99999.2"
    assert FEDERATION_OIDS == (GRANT_ID_OID, SUBJECT_USER_ID_OID)


def test_der_encode_oid_known_vectors() -> None:
    assert der_encode_oid(GRANT_ID_OID) == bytes.fromhex("06092b06010401868d1f01")
    assert der_encode_oid(SUBJECT_USER_ID_OID) == bytes.fromhex("06092b06010401868d1f02")
    assert der_encode_oid(x509.ObjectIdentifier("2.999.3")) == bytes.fromhex("0603883703")


def test_der_encode_oid_matches_cryptography() -> None:
    cert = _cert([(GRANT_ID_OID, KNOWN_DER, False), (SUBJECT_USER_ID_OID, KNOWN_DER, False)])
    der = cert.public_bytes(serialization.Encoding.DER)
    for oid in FEDERATION_OIDS:
        assert der.count(der_encode_oid(oid)) == 1


# --------------------------------------------------------------------------------------------
# Codec
# --------------------------------------------------------------------------------------------


def test_encode_known_vector_matches_step_ca_template_layout() -> None:
    # deploy/step-ca/templates: printf "\x0c\x24%s" uuid
    assert encode_uuid_utf8string(KNOWN_UUID) == KNOWN_DER
    assert decode_uuid_utf8string(KNOWN_DER) == KNOWN_UUID


def test_encode_refuses_non_uuid() -> None:
    with pytest.raises(TypeError):
        encode_uuid_utf8string(str(KNOWN_UUID))  # type: ignore[arg-type]


@given(st.uuids())
def test_round_trip_any_uuid(value: uuid.UUID) -> None:
    encoded = encode_uuid_utf8string(value)
    assert encoded[:2] == b"\x0c\x24"
    assert len(encoded) == 38
    assert encoded[2:] == str(value).encode("ascii")
    assert decode_uuid_utf8string(encoded) == value


@given(st.uuids(), st.data())
def test_every_truncation_is_rejected(value: uuid.UUID, data: st.DataObject) -> None:
    encoded = encode_uuid_utf8string(value)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    _value_error(encoded[:cut])


@given(st.uuids(), st.binary(min_size=1, max_size=40))
def test_trailing_bytes_are_rejected(value: uuid.UUID, extra: bytes) -> None:
    message = _value_error(encode_uuid_utf8string(value) + extra)
    assert "trailing" in message


@given(st.uuids())
def test_non_minimal_long_form_lengths_are_rejected(value: uuid.UUID) -> None:
    text = str(value).encode("ascii")
    for length_octets in (
        b"\x81\x24",
        b"\x82\x00\x24",
        b"\x83\x00\x00\x24",
        b"\x84\x00\x00\x00\x24",
    ):
        assert "non-minimal" in _value_error(b"\x0c" + length_octets + text)


def test_indefinite_and_reserved_lengths_are_rejected() -> None:
    text = str(KNOWN_UUID).encode("ascii")
    assert "indefinite" in _value_error(b"\x0c\x80" + text + b"\x00\x00")
    assert "reserved" in _value_error(b"\x0c\xff" + text)
    assert "too long" in _value_error(b"\x0c\x85\x00\x00\x00\x00\x24" + text)


def test_length_past_end_is_rejected() -> None:
    text = str(KNOWN_UUID).encode("ascii")
    assert "past the end" in _value_error(b"\x0c\x25" + text)
    assert "past the end" in _value_error(b"\x0c\x82\x01\x00" + text)
    assert "past the end" in _value_error(b"\x0c\x82\x01")


def test_valid_long_form_is_parsed_but_not_a_uuid() -> None:
    # A correctly encoded long-form length reaches the content rules (and fails them).
    assert "canonical UUID" in _value_error(b"\x0c\x81\xc8" + b"a" * 200)


def test_read_tlv_short_and_long_form() -> None:
    assert _read_tlv(b"\x04\x02ab\x05\x00", 0) == (0x04, b"ab", 4)
    assert _read_tlv(b"\x04\x02ab\x05\x00", 4) == (0x05, b"", 6)
    long_value = bytes(range(256)) * 2
    assert _read_tlv(b"\x04\x81\x80" + long_value[:128], 0) == (0x04, long_value[:128], 131)
    assert _read_tlv(b"\x04\x82\x02\x00" + long_value, 0) == (0x04, long_value, 516)


@pytest.mark.parametrize(
    ("data", "offset", "fragment"),
    [
        (b"", 0, "no tag"),
        (b"\x04\x00", 2, "no tag"),
        (b"\x04\x00", -1, "no tag"),
        (b"\x04", 0, "no length"),
        (b"\x1f\x01\x00", 0, "multi-octet tags"),
        (b"\x04\x80\x00\x00", 0, "indefinite"),
        (b"\x04\x81", 0, "length octets past the end"),
        (b"\x04\x81\x7f" + b"a" * 127, 0, "non-minimal"),
        (b"\x04\x82\x00\x80" + b"a" * 128, 0, "non-minimal"),
        (b"\x04\x03ab", 0, "past the end"),
    ],
)
def test_read_tlv_refusals(data: bytes, offset: int, fragment: str) -> None:
    with pytest.raises(MalformedFederationValue) as info:
        _read_tlv(data, offset)
    assert fragment in str(info.value)


@pytest.mark.parametrize("tag", [0x13, 0x16, 0x04, 0x1E, 0x0D, 0x2C, 0x8C])
def test_wrong_tag_is_rejected(tag: int) -> None:
    # PrintableString, IA5String, OCTET STRING, BMPString, RELATIVE-OID, constructed
    # UTF8String, context-specific [12].
    text = str(KNOWN_UUID).encode("ascii")
    assert "not a UTF8String" in _value_error(bytes([tag, len(text)]) + text)


@pytest.mark.parametrize(
    "text",
    [
        str(KNOWN_UUID).upper(),
        str(KNOWN_UUID)[:9] + str(KNOWN_UUID)[9:].upper(),
        KNOWN_UUID.hex,
        "{" + str(KNOWN_UUID) + "}",
        "urn:uuid:" + str(KNOWN_UUID),
        " " + str(KNOWN_UUID)[1:],
        str(KNOWN_UUID)[:-1] + "\n",
        str(KNOWN_UUID) + "\n",
        str(KNOWN_UUID)[:-1] + "\x00",
        str(KNOWN_UUID) + "\x00",
        "\x00" + str(KNOWN_UUID)[1:],
        str(KNOWN_UUID).replace("-", "_"),
        "0f8fad5bd-9cb-469f-a165-70867728950e",
        "0f8fad5b-d9cb-469f-a165-70867728950g",
        "",
        "0" * 36,
    ],
)
def test_non_canonical_uuid_text_is_rejected(text: str) -> None:
    assert "canonical UUID" in _value_error(_utf8string(text.encode("utf-8")))


def test_non_ascii_digits_are_rejected() -> None:
    # uuid.UUID() would accept these: int(..., 16) understands Unicode decimal digits.
    arabic = "\u0660" * 32
    assert uuid.UUID(arabic) == uuid.UUID(int=0)
    sneaky = "\u0660" * 2 + "0000-0000-0000-0000-000000000000"
    assert len(sneaky.encode("utf-8")) == 36
    assert "canonical UUID" in _value_error(_utf8string(sneaky.encode("utf-8")))


@pytest.mark.parametrize(
    "content",
    [
        b"\xff" + str(KNOWN_UUID).encode("ascii")[1:],
        b"\xc0\xad" + str(KNOWN_UUID).encode("ascii")[2:],  # overlong "-"
        b"\xed\xa0\x80" + str(KNOWN_UUID).encode("ascii")[3:],  # UTF-16 surrogate
        str(KNOWN_UUID).encode("ascii")[:35] + b"\x80",
    ],
)
def test_invalid_utf8_is_rejected(content: bytes) -> None:
    assert len(content) == 36
    assert "UTF-8" in _value_error(_utf8string(content))


@pytest.mark.parametrize("value", [bytearray(KNOWN_DER), memoryview(KNOWN_DER), "x", None])
def test_non_bytes_input_is_rejected(value: Any) -> None:
    _value_error(value)


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_only_decode_when_canonical(data: bytes) -> None:
    try:
        decoded = decode_uuid_utf8string(data)
    except MalformedFederationValue:
        return
    # Success implies the input is the single canonical encoding of the result.
    assert encode_uuid_utf8string(decoded) == data


@given(st.text(max_size=40))
def test_arbitrary_utf8string_decodes_iff_canonical(text: str) -> None:
    raw = text.encode("utf-8", errors="surrogatepass")
    if len(raw) >= 0x80:
        return
    try:
        decoded = decode_uuid_utf8string(_utf8string(raw))
    except MalformedFederationValue:
        return
    assert str(decoded) == text


@given(st.uuids(), st.data())
def test_single_byte_mutations_never_escape(value: uuid.UUID, data: st.DataObject) -> None:
    encoded = bytearray(encode_uuid_utf8string(value))
    index = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    encoded[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    try:
        decoded = decode_uuid_utf8string(bytes(encoded))
    except MalformedFederationValue:
        return
    # Only a change inside the hex digits that keeps them lowercase hex can still decode.
    assert index >= 2
    assert decoded != value
    assert encode_uuid_utf8string(decoded) == bytes(encoded)


def test_value_error_message_does_not_echo_input() -> None:
    secretish = b"\x0c\x24" + b"ZZZZ-attacker-controlled-content-ZZZ"
    assert b"attacker" not in _value_error(secretish).encode()


# --------------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------------


def test_add_federation_extensions_builds_non_critical_unrecognized_extensions() -> None:
    cert = add_federation_extensions(_base_builder(), GRANT, SUBJECT).sign(CA_KEY, None)
    grant_ext = cert.extensions.get_extension_for_oid(GRANT_ID_OID)
    subject_ext = cert.extensions.get_extension_for_oid(SUBJECT_USER_ID_OID)
    assert grant_ext.critical is False
    assert subject_ext.critical is False
    assert isinstance(grant_ext.value, x509.UnrecognizedExtension)
    assert isinstance(subject_ext.value, x509.UnrecognizedExtension)
    assert grant_ext.value.value == encode_uuid_utf8string(GRANT)
    assert subject_ext.value.value == encode_uuid_utf8string(SUBJECT)


def test_extract_both_present() -> None:
    builder = add_federation_extensions(_base_builder(), GRANT, SUBJECT).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    )
    identity = extract_federation_identity(builder.sign(CA_KEY, None))
    assert identity == FederationIdentity(grant_id=GRANT, subject_user_id=SUBJECT)


def test_extract_from_step_ca_layout() -> None:
    cert = _cert(
        [
            (GRANT_ID_OID, b"\x0c\x24" + str(GRANT).encode(), False),
            (SUBJECT_USER_ID_OID, b"\x0c\x24" + str(SUBJECT).encode(), False),
        ]
    )
    assert extract_federation_identity(cert) == FederationIdentity(GRANT, SUBJECT)


def test_identity_is_frozen() -> None:
    identity = FederationIdentity(grant_id=GRANT, subject_user_id=SUBJECT)
    with pytest.raises(AttributeError):
        identity.grant_id = SUBJECT  # type: ignore[misc]


def test_missing_grant_id() -> None:
    cert = _cert([(SUBJECT_USER_ID_OID, encode_uuid_utf8string(SUBJECT), False)])
    assert _reason(cert) == "missing_grant_id"


def test_missing_subject_user_id() -> None:
    cert = _cert([(GRANT_ID_OID, encode_uuid_utf8string(GRANT), False)])
    assert _reason(cert) == "missing_subject_user_id"


def test_missing_both_reports_grant_first() -> None:
    assert _reason(_cert([])) == "missing_grant_id"


def test_other_oid_does_not_count() -> None:
    cert = _cert(
        [
            (GRANT_ID_OID, encode_uuid_utf8string(GRANT), False),
            (PLACEHOLDER_OID, encode_uuid_utf8string(SUBJECT), False),
        ]
    )
    assert _reason(cert) == "missing_subject_user_id"


@pytest.mark.parametrize("oid", FEDERATION_OIDS)
def test_duplicate_extension_in_signed_certificate(oid: x509.ObjectIdentifier) -> None:
    cert = _cert_with_duplicate(oid)
    # The library refuses to expose a duplicated extension list; extraction maps that.
    with pytest.raises(x509.DuplicateExtension):
        _ = cert.extensions
    assert _reason(cert) == "duplicate_extension"


def test_duplicate_counted_when_iterating_a_list() -> None:
    """The counting path, independent of cryptography raising DuplicateExtension."""
    grant = x509.Extension(
        GRANT_ID_OID, False, x509.UnrecognizedExtension(GRANT_ID_OID, encode_uuid_utf8string(GRANT))
    )
    subject = x509.Extension(
        SUBJECT_USER_ID_OID,
        False,
        x509.UnrecognizedExtension(SUBJECT_USER_ID_OID, encode_uuid_utf8string(SUBJECT)),
    )
    assert federation_identity_from_extensions([grant, subject]) == FederationIdentity(
        GRANT, SUBJECT
    )
    for extensions in ([grant, subject, grant], [subject, grant, subject], [grant, grant]):
        with pytest.raises(MalformedFederationIdentity) as info:
            federation_identity_from_extensions(extensions)
        assert info.value.reason == "duplicate_extension"


def test_non_unrecognized_value_is_malformed() -> None:
    grant = x509.Extension(GRANT_ID_OID, False, x509.BasicConstraints(ca=False, path_length=None))
    subject = x509.Extension(
        SUBJECT_USER_ID_OID,
        False,
        x509.UnrecognizedExtension(SUBJECT_USER_ID_OID, encode_uuid_utf8string(SUBJECT)),
    )
    with pytest.raises(MalformedFederationIdentity) as info:
        federation_identity_from_extensions([grant, subject])
    assert info.value.reason == "malformed_value"


@pytest.mark.parametrize(
    ("grant_value", "subject_value"),
    [
        (_utf8string(str(GRANT).upper().encode()), encode_uuid_utf8string(SUBJECT)),
        (encode_uuid_utf8string(GRANT), b"\x13\x24" + str(SUBJECT).encode()),
        (encode_uuid_utf8string(GRANT), b""),
        (encode_uuid_utf8string(GRANT) + b"\x00", encode_uuid_utf8string(SUBJECT)),
        (b"\x04\x10" + GRANT.bytes, encode_uuid_utf8string(SUBJECT)),
    ],
)
def test_malformed_value(grant_value: bytes, subject_value: bytes) -> None:
    cert = _cert([(GRANT_ID_OID, grant_value, False), (SUBJECT_USER_ID_OID, subject_value, False)])
    assert _reason(cert) == "malformed_value"


@pytest.mark.parametrize(("grant_critical", "subject_critical"), [(True, False), (False, True)])
def test_critical_federation_extension_is_refused(
    grant_critical: bool, subject_critical: bool
) -> None:
    cert = _cert(
        [
            (GRANT_ID_OID, encode_uuid_utf8string(GRANT), grant_critical),
            (SUBJECT_USER_ID_OID, encode_uuid_utf8string(SUBJECT), subject_critical),
        ]
    )
    assert _reason(cert) == "critical_extension"


def test_identity_error_does_not_echo_certificate_content() -> None:
    marker = b"attacker-controlled-marker-12345678"
    cert = _cert(
        [
            (GRANT_ID_OID, _utf8string(marker), False),
            (SUBJECT_USER_ID_OID, encode_uuid_utf8string(SUBJECT), False),
        ]
    )
    with pytest.raises(MalformedFederationIdentity) as info:
        extract_federation_identity(cert)
    assert "attacker" not in str(info.value)
    assert info.value.__cause__ is None


def test_unknown_reason_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown"):
        MalformedFederationIdentity("because")


@functools.cache
def _mutation_base_der() -> bytes:
    builder = add_federation_extensions(_base_builder(), GRANT, SUBJECT).add_extension(
        x509.SubjectAlternativeName([x509.DNSName("gw.example")]), critical=False
    )
    return builder.sign(CA_KEY, None).public_bytes(serialization.Encoding.DER)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_certificates_only_raise_malformed_identity(data: st.DataObject) -> None:
    # One fixed certificate for every example: hypothesis needs the same length each time.
    der = bytearray(_mutation_base_der())
    index = data.draw(st.integers(min_value=0, max_value=len(der) - 1), label="index")
    der[index] ^= data.draw(st.integers(min_value=1, max_value=255), label="xor")
    try:
        with warnings.catch_warnings():
            # A mutated serial may turn negative: cryptography warns, then parses it anyway.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            cert = x509.load_der_x509_certificate(bytes(der))
    except (ValueError, x509.InvalidVersion):
        return  # the TLS layer would never hand us this certificate
    outcome: FederationIdentity | MalformedFederationIdentity
    try:
        outcome = extract_federation_identity(cert)
    except MalformedFederationIdentity as error:
        outcome = error
    if isinstance(outcome, MalformedFederationIdentity):
        assert outcome.reason in REASONS
