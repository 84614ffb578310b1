"""Unit tests for fedcore.csr: every rule refuses with its own message and never echoes input."""

from __future__ import annotations

import base64
import datetime
import re
import uuid
import warnings
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import AttributeOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcore import csr as csr_module
from fedcore.csr import (
    MAX_CSR_PEM_BYTES,
    MSG_ATTRIBUTES,
    MSG_CN_CHARS,
    MSG_CN_LENGTH,
    MSG_EXT_CA,
    MSG_EXT_FEDERATION,
    MSG_EXT_OTHER,
    MSG_EXT_SAN,
    MSG_FEDERATION_OID_BYTES,
    MSG_KEY_TYPE,
    MSG_NOT_ASCII,
    MSG_NOT_TEXT,
    MSG_PARSE,
    MSG_PEM_BLOCKS,
    MSG_PEM_BODY,
    MSG_SIGNATURE,
    MSG_SIGNATURE_ALGORITHM,
    MSG_SUBJECT,
    MSG_TOO_LARGE,
    InvalidCsr,
    ValidatedCsr,
    make_csr,
    validate_csr,
)
from fedcore.errors import BadRequest
from fedcore.federation_oids import GRANT_ID_OID, SUBJECT_USER_ID_OID, encode_uuid_utf8string

P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED25519 = ed25519.Ed25519PrivateKey.generate()

ALL_MESSAGES = {
    value
    for name, value in vars(csr_module).items()
    if name.startswith("MSG_") and isinstance(value, str)
}


def _cn(value: str) -> x509.Name:
    # _validate=False lets tests build the over-long/empty names an attacker could send;
    # cryptography then warns instead of raising, which is expected here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attribute's length", category=UserWarning)
        attribute = x509.NameAttribute(NameOID.COMMON_NAME, value, _validate=False)
    return x509.Name([attribute])


def _csr_pem(
    key: Any = P256,
    *,
    subject: x509.Name | None = None,
    extensions: list[tuple[x509.ExtensionType, bool]] | None = None,
    attributes: list[tuple[x509.ObjectIdentifier, bytes]] | None = None,
    algorithm: hashes.SHA256 | hashes.SHA384 | None = None,
) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        _cn("gw-alpha.example") if subject is None else subject
    )
    for extension, critical in extensions or []:
        builder = builder.add_extension(extension, critical=critical)
    for oid, value in attributes or []:
        builder = builder.add_attribute(oid, value)
    if algorithm is None and not isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm = hashes.SHA256()
    request = builder.sign(key, algorithm)
    return request.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _der_to_pem(der: bytes) -> str:
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + "\n".join(lines)
        + "\n-----END CERTIFICATE REQUEST-----\n"
    )


def _pem_to_der(pem: str) -> bytes:
    return x509.load_pem_x509_csr(pem.encode("ascii")).public_bytes(serialization.Encoding.DER)


def _refused(pem: Any, message: str) -> InvalidCsr:
    with pytest.raises(InvalidCsr) as info:
        validate_csr(pem)
    error = info.value
    assert error.code == "invalid_csr"
    assert error.status_code == 400
    assert isinstance(error, BadRequest)
    assert error.message == message
    assert str(error) == message
    assert error.message in ALL_MESSAGES
    if isinstance(pem, str) and pem:
        # Nothing of the input comes back: not the PEM, not any of its body lines.
        assert pem not in error.message
        for line in pem.splitlines():
            if len(line) >= 8 and not line.startswith("-----"):
                assert line not in error.message
    return error


def _self_signed_cert_pem() -> str:
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_cn("gw-alpha"))
        .issuer_name(_cn("gw-alpha"))
        .public_key(P256.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(minutes=5))
        .sign(P256, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


GOOD = _csr_pem()


# --------------------------------------------------------------------------------------------
# Accepted
# --------------------------------------------------------------------------------------------


def test_good_csr_passes() -> None:
    result = validate_csr(GOOD)
    assert isinstance(result, ValidatedCsr)
    assert result.common_name == "gw-alpha.example"
    assert result.public_key.public_numbers() == P256.public_key().public_numbers()
    assert result.csr.is_signature_valid


def test_make_csr_output_passes() -> None:
    pem = make_csr(P256, "cli_user-1.example")
    assert pem.startswith("-----BEGIN CERTIFICATE REQUEST-----\n")
    result = validate_csr(pem)
    assert result.common_name == "cli_user-1.example"
    assert result.public_key.public_numbers() == P256.public_key().public_numbers()


@pytest.mark.parametrize("name", ["a", "Z", "9", "a" * 63, "a.b", "a_b", "a-b", "A1.b_C-2"])
def test_common_name_boundaries_accepted(name: str) -> None:
    assert validate_csr(_csr_pem(subject=_cn(name))).common_name == name


def test_surrounding_whitespace_and_crlf_are_accepted() -> None:
    assert validate_csr("\n  " + GOOD + "\n\n").common_name == "gw-alpha.example"
    assert validate_csr(GOOD.replace("\n", "\r\n")).common_name == "gw-alpha.example"


def test_exactly_max_bytes_is_accepted() -> None:
    padded = GOOD + " " * (MAX_CSR_PEM_BYTES - len(GOOD))
    assert len(padded.encode()) == MAX_CSR_PEM_BYTES
    validate_csr(padded)


# --------------------------------------------------------------------------------------------
# Size, framing, parsing
# --------------------------------------------------------------------------------------------


def test_oversize_is_refused_before_parsing() -> None:
    # Valid CSR plus one byte of whitespace too many: size alone decides.
    _refused(GOOD + " " * (MAX_CSR_PEM_BYTES - len(GOOD) + 1), MSG_TOO_LARGE)
    _refused("A" * 10_000_000, MSG_TOO_LARGE)


def test_size_counts_bytes_not_characters() -> None:
    multibyte = "\u00e9" * (MAX_CSR_PEM_BYTES // 2 + 1)
    assert len(multibyte) <= MAX_CSR_PEM_BYTES
    _refused(multibyte, MSG_TOO_LARGE)


def test_non_ascii_is_refused() -> None:
    _refused("\u00e9" + GOOD, MSG_NOT_ASCII)


@pytest.mark.parametrize("value", [GOOD.encode("ascii"), None, 42])
def test_non_string_is_refused(value: Any) -> None:
    _refused(value, MSG_NOT_TEXT)


@pytest.mark.parametrize("text", ["", "hello", "   \n", "BEGIN CERTIFICATE REQUEST"])
def test_garbage_is_refused(text: str) -> None:
    _refused(text, MSG_PEM_BLOCKS)


def test_two_csr_blocks_are_refused() -> None:
    _refused(GOOD + GOOD, MSG_PEM_BLOCKS)
    _refused(GOOD + _csr_pem(P256, subject=_cn("other")), MSG_PEM_BLOCKS)


def test_csr_with_other_blocks_is_refused() -> None:
    cert = _self_signed_cert_pem()
    key = P256.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    _refused(cert + GOOD, MSG_PEM_BLOCKS)
    _refused(GOOD + cert, MSG_PEM_BLOCKS)
    _refused(GOOD + key, MSG_PEM_BLOCKS)
    _refused(cert, MSG_PEM_BLOCKS)


def test_wrong_pem_type_is_refused() -> None:
    _refused(GOOD.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"), MSG_PEM_BLOCKS)
    _refused(GOOD.replace("CERTIFICATE REQUEST", "CERTIFICATE"), MSG_PEM_BLOCKS)
    # BEGIN/END types that disagree
    _refused(GOOD.replace("END CERTIFICATE REQUEST", "END CERTIFICATE"), MSG_PEM_BLOCKS)


def test_text_around_the_block_is_refused() -> None:
    _refused("Certificate Request:\n" + GOOD, MSG_PEM_BLOCKS)
    _refused(GOOD + "trailing", MSG_PEM_BLOCKS)


def test_pem_headers_are_refused() -> None:
    with_header = GOOD.replace(
        "-----BEGIN CERTIFICATE REQUEST-----\n",
        "-----BEGIN CERTIFICATE REQUEST-----\nProc-Type: 4,ENCRYPTED\n\n",
    )
    _refused(with_header, MSG_PEM_BODY)


def test_bad_base64_is_refused() -> None:
    _refused(
        "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n",
        MSG_PEM_BODY,
    )
    _refused(
        "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n", MSG_PEM_BODY
    )


def _pem_body(body: str) -> str:
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"


def test_canonical_base64_reaches_the_parser() -> None:
    assert base64.b64encode(b"\x30\x00") == b"MAA="
    _refused(_pem_body("MAA="), MSG_PARSE)


@pytest.mark.parametrize(
    "body",
    ["MAB=", "MAA", "MAA==", "MAA=MAA=", "=MAA", "MA A=", "MAA=\tx", "MAA=" + "="],
    ids=[
        "pad-bits",
        "no-padding",
        "extra-padding",
        "data-after-padding",
        "leading-padding",
        "space",
        "tab",
        "double-pad",
    ],
)
def test_non_canonical_base64_is_refused(body: str) -> None:
    # Other texts for the same DER (or no DER at all) are refused before parsing.
    _refused(_pem_body(body), MSG_PEM_BODY)


def test_base64_of_non_csr_is_refused() -> None:
    _refused(_der_to_pem(b"\x30\x03\x02\x01\x00"), MSG_PARSE)
    _refused(_der_to_pem(bytes(range(200))), MSG_PARSE)
    _refused(_der_to_pem(_pem_to_der(GOOD) + b"\x00"), MSG_PARSE)


# --------------------------------------------------------------------------------------------
# Signature and key
# --------------------------------------------------------------------------------------------


def test_bad_signature_is_refused() -> None:
    der = bytearray(_pem_to_der(GOOD))
    der[-1] ^= 0x01  # last byte of the ECDSA signature's s value
    _refused(_der_to_pem(bytes(der)), MSG_SIGNATURE)


def test_subject_swapped_after_signing_is_refused() -> None:
    der = _pem_to_der(GOOD)
    tampered = der.replace(b"gw-alpha.example", b"gw-omega.example")
    assert tampered != der
    _refused(_der_to_pem(tampered), MSG_SIGNATURE)


def test_p384_is_refused() -> None:
    _refused(_csr_pem(P384), MSG_KEY_TYPE)


def test_rsa_is_refused() -> None:
    _refused(_csr_pem(RSA), MSG_KEY_TYPE)


def test_ed25519_is_refused() -> None:
    _refused(_csr_pem(ED25519), MSG_KEY_TYPE)


def test_p256_with_sha384_is_refused() -> None:
    _refused(_csr_pem(P256, algorithm=hashes.SHA384()), MSG_SIGNATURE_ALGORITHM)


# --------------------------------------------------------------------------------------------
# Subject
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "bad\nname",
        "{{ .Token }}",
        "{{name}}",
        "a b",
        " a",
        "-abc",
        "abc.",
        "_abc",
        "caf\u00e9",
        "a\x00b",
        "${jndi:ldap://x}",
        "a/b",
        "a\rb",
        "\u0430dmin",  # Cyrillic a
    ],
)
def test_bad_common_name_characters_are_refused(name: str) -> None:
    _refused(_csr_pem(subject=_cn(name)), MSG_CN_CHARS)


@pytest.mark.parametrize("length", [64, 65, 200])
def test_long_common_name_is_refused(length: int) -> None:
    _refused(_csr_pem(subject=_cn("a" * length)), MSG_CN_LENGTH)


def test_empty_common_name_is_refused() -> None:
    _refused(_csr_pem(subject=_cn("")), MSG_CN_LENGTH)


@pytest.mark.parametrize(
    "subject",
    [
        x509.Name([]),
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme")]),
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "gw"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme"),
            ]
        ),
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "gw"),
                x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
            ]
        ),
        x509.Name(
            [
                x509.RelativeDistinguishedName(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, "gw"),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),
                    ]
                )
            ]
        ),
    ],
    ids=["empty", "o-only", "cn-and-o", "two-cn", "multi-valued-rdn"],
)
def test_subject_must_be_a_single_cn(subject: x509.Name) -> None:
    _refused(_csr_pem(subject=subject), MSG_SUBJECT)


# --------------------------------------------------------------------------------------------
# Extensions and attributes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("oid", [GRANT_ID_OID, SUBJECT_USER_ID_OID])
def test_federation_oid_extension_is_refused(oid: x509.ObjectIdentifier) -> None:
    spoof = x509.UnrecognizedExtension(oid, encode_uuid_utf8string(uuid.uuid4()))
    _refused(_csr_pem(extensions=[(spoof, False)]), MSG_EXT_FEDERATION)


def test_federation_oid_wins_over_other_extensions() -> None:
    spoof = x509.UnrecognizedExtension(GRANT_ID_OID, encode_uuid_utf8string(uuid.uuid4()))
    san = x509.SubjectAlternativeName([x509.DNSName("evil.example")])
    ca = x509.BasicConstraints(ca=True, path_length=None)
    _refused(_csr_pem(extensions=[(san, False), (ca, True), (spoof, False)]), MSG_EXT_FEDERATION)


def test_ca_basic_constraints_is_refused() -> None:
    ca = x509.BasicConstraints(ca=True, path_length=0)
    _refused(_csr_pem(extensions=[(ca, True)]), MSG_EXT_CA)
    san = x509.SubjectAlternativeName([x509.DNSName("evil.example")])
    _refused(_csr_pem(extensions=[(san, False), (ca, False)]), MSG_EXT_CA)


def test_san_is_refused() -> None:
    san = x509.SubjectAlternativeName(
        [x509.DNSName("gw-alpha.example"), x509.UniformResourceIdentifier("spiffe://x/y")]
    )
    _refused(_csr_pem(extensions=[(san, False)]), MSG_EXT_SAN)


@pytest.mark.parametrize(
    "extension",
    [
        x509.BasicConstraints(ca=False, path_length=None),
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        ),
        x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
        x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.3"), b"\x05\x00"),
    ],
    ids=["ca-false", "key-usage", "eku", "unknown"],
)
def test_any_other_extension_is_refused(extension: x509.ExtensionType) -> None:
    _refused(_csr_pem(extensions=[(extension, False)]), MSG_EXT_OTHER)


def test_challenge_password_attribute_is_refused() -> None:
    pem = _csr_pem(attributes=[(AttributeOID.CHALLENGE_PASSWORD, b"hunter2hunter2")])
    error = _refused(pem, MSG_ATTRIBUTES)
    assert "hunter2" not in error.message


def test_unstructured_name_attribute_is_refused() -> None:
    _refused(_csr_pem(attributes=[(AttributeOID.UNSTRUCTURED_NAME, b"x")]), MSG_ATTRIBUTES)


@pytest.mark.parametrize("oid", [GRANT_ID_OID, SUBJECT_USER_ID_OID])
def test_federation_oid_hidden_in_an_attribute_is_refused(oid: x509.ObjectIdentifier) -> None:
    # Not an extension request: only the raw-DER scan catches this one.
    pem = _csr_pem(attributes=[(oid, str(uuid.uuid4()).encode("ascii"))])
    _refused(pem, MSG_FEDERATION_OID_BYTES)


# --------------------------------------------------------------------------------------------
# make_csr and robustness
# --------------------------------------------------------------------------------------------


def test_make_csr_refuses_bad_inputs() -> None:
    with pytest.raises(InvalidCsr) as info:
        make_csr(P256, "evil\nname")
    assert info.value.message == MSG_CN_CHARS
    with pytest.raises(InvalidCsr) as info:
        make_csr(P256, "a" * 64)
    assert info.value.message == MSG_CN_LENGTH
    with pytest.raises(InvalidCsr) as info:
        make_csr(P384, "gw")
    assert info.value.message == MSG_KEY_TYPE
    with pytest.raises(InvalidCsr) as info:
        make_csr(RSA, "gw")  # type: ignore[arg-type]
    assert info.value.message == MSG_KEY_TYPE


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_invalid_csr(text: str) -> None:
    with pytest.raises(InvalidCsr) as info:
        validate_csr(text)
    assert info.value.code == "invalid_csr"
    assert info.value.message in ALL_MESSAGES


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_single_character_edits_never_yield_another_key(data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(GOOD) - 1))
    replacement = data.draw(st.characters(codec="ascii"))
    edited = GOOD[:index] + replacement + GOOD[index + 1 :]
    outcome: ValidatedCsr | InvalidCsr
    try:
        outcome = validate_csr(edited)
    except InvalidCsr as error:
        outcome = error
    if isinstance(outcome, InvalidCsr):
        assert outcome.code == "invalid_csr"
        assert outcome.message in ALL_MESSAGES
        return
    # Only harmless edits (e.g. the final newline turned into other whitespace) may pass.
    assert re.sub(r"\s", "", edited) == re.sub(r"\s", "", GOOD)
    assert outcome.public_key.public_numbers() == P256.public_key().public_numbers()


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_any_single_der_byte_edit_is_refused(data: st.DataObject) -> None:
    der = bytearray(_pem_to_der(GOOD))
    index = data.draw(st.integers(min_value=0, max_value=len(der) - 1), label="index")
    der[index] ^= data.draw(st.integers(min_value=1, max_value=255), label="xor")
    error = _refused_any(_der_to_pem(bytes(der)))
    assert error.message in {MSG_PARSE, MSG_SIGNATURE}


def test_a_signature_bit_string_with_unused_bits_is_refused() -> None:
    # ECDSA signatures are random: sign until the last signature byte ends in zero bits, so
    # the parser would take the same bytes with an "unused bits" count (found by the test above).
    for _ in range(64):
        pem = _csr_pem()
        request = x509.load_pem_x509_csr(pem.encode("ascii"))
        if request.signature[-1] & 0x03 == 0:
            break
    else:
        pytest.fail("no signature ending in two zero bits in 64 tries")
    der = bytearray(_pem_to_der(pem))
    unused_bits_at = len(der) - len(request.signature) - 1
    assert der[unused_bits_at] == 0
    validate_csr(pem)  # the canonical form passes
    for unused in (1, 2):
        der[unused_bits_at] = unused
        assert _refused_any(_der_to_pem(bytes(der))).message == MSG_PARSE


def _refused_any(pem: str) -> InvalidCsr:
    with pytest.raises(InvalidCsr) as info:
        validate_csr(pem)
    assert info.value.code == "invalid_csr"
    return info.value


def test_invalid_version_is_refused_not_crashed() -> None:
    """cryptography raises InvalidVersion (not a ValueError) for version != 0."""
    der = bytearray(_pem_to_der(GOOD))
    # CertificationRequest > CertificationRequestInfo > version INTEGER 0: "02 01 00".
    index = der.index(b"\x02\x01\x00")
    der[index + 2] = 0x0D
    _refused(_der_to_pem(bytes(der)), MSG_PARSE)
