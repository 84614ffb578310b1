"""Certificate signing request checks shared by the ca-broker and the ``mosaic`` CLI.

The broker signs client certificates whose authority comes entirely from extensions it builds
itself (the federation grant id / subject user id, key usage, validity). It copies NOTHING from
the CSR except the public key and a sanity-checked common name. These checks make that
explicit: a CSR that asks for anything (extensions, attributes, CA rights, alternative names,
federation OIDs) is refused, so a request that tries is visible as an error instead of being
silently dropped.

Every refusal is :class:`InvalidCsr` (400 ``invalid_csr``) whose message names the rule that
failed and never contains any part of the input.
"""

from __future__ import annotations

import base64
import binascii
import re
import warnings
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID

from fedcore.errors import BadRequest
from fedcore.federation_oids import FEDERATION_OIDS, der_encode_oid

MAX_CSR_PEM_BYTES: Final = 8192
MAX_COMMON_NAME_LENGTH: Final = 63

# Letters, digits, '.', '_', '-'; alphanumeric at both ends; 1..63 characters. No spaces,
# braces, quotes, newlines or non-ASCII: the name ends up in logs, audit rows and templates.
COMMON_NAME_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?", re.ASCII)

_PEM_TYPE: Final = "CERTIFICATE REQUEST"
_PEM_BEGIN: Final = f"-----BEGIN {_PEM_TYPE}-----"
_PEM_END: Final = f"-----END {_PEM_TYPE}-----"
# The base64 alphabet plus the line breaks PEM puts in it; nothing else (no PEM headers).
_PEM_BODY_RE: Final = re.compile(r"[A-Za-z0-9+/=\r\n]*", re.ASCII)

# The OBJECT IDENTIFIER content octets (without tag and length) of each federation OID.
_FEDERATION_OID_CONTENTS: Final = tuple(der_encode_oid(oid)[2:] for oid in FEDERATION_OIDS)

# Messages, one per rule. None of them interpolates input.
MSG_NOT_TEXT: Final = "CSR must be a PEM string"
MSG_TOO_LARGE: Final = f"CSR PEM exceeds {MAX_CSR_PEM_BYTES} bytes"
MSG_NOT_ASCII: Final = "CSR PEM must be ASCII"
MSG_PEM_BLOCKS: Final = "CSR must be exactly one PEM block of type CERTIFICATE REQUEST"
MSG_PEM_BODY: Final = "CSR PEM body is not valid base64"
MSG_PARSE: Final = "CSR could not be parsed"
MSG_SIGNATURE: Final = "CSR signature is invalid"
MSG_KEY_TYPE: Final = "CSR public key must be an EC key on curve P-256"
MSG_SIGNATURE_ALGORITHM: Final = "CSR must be signed with ecdsa-with-SHA256"
MSG_SUBJECT: Final = "CSR subject must consist of exactly one common name and nothing else"
MSG_CN_LENGTH: Final = f"CSR common name must be 1 to {MAX_COMMON_NAME_LENGTH} characters"
MSG_CN_CHARS: Final = (
    "CSR common name may contain only letters, digits, '.', '_' and '-' "
    "and must start and end with a letter or digit"
)
MSG_EXT_FEDERATION: Final = "CSR must not request federation extensions"
MSG_EXT_CA: Final = "CSR must not request a CA certificate"
MSG_EXT_SAN: Final = "CSR must not request subject alternative names"
MSG_EXT_OTHER: Final = "CSR must not request any extensions"
MSG_EXT_MALFORMED: Final = "CSR extension request is malformed"
MSG_FEDERATION_OID_BYTES: Final = "CSR must not contain federation object identifiers"
MSG_ATTRIBUTES: Final = "CSR must not carry attributes"


class InvalidCsr(BadRequest):
    """A CSR broke one of the rules of :func:`validate_csr` (400 ``invalid_csr``)."""

    default_code = "invalid_csr"


@dataclass(frozen=True)
class ValidatedCsr:
    """A CSR that passed every rule; the broker uses only ``public_key`` and ``common_name``."""

    csr: x509.CertificateSigningRequest
    public_key: ec.EllipticCurvePublicKey
    common_name: str


def _check_common_name(common_name: str) -> str:
    if not isinstance(common_name, str) or not 1 <= len(common_name) <= MAX_COMMON_NAME_LENGTH:
        raise InvalidCsr(MSG_CN_LENGTH)
    if COMMON_NAME_RE.fullmatch(common_name) is None:
        # Blocks newline/log injection, template syntax ("{{"), spaces and homoglyphs.
        raise InvalidCsr(MSG_CN_CHARS)
    return common_name


def _check_public_key(key: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InvalidCsr(MSG_KEY_TYPE)
    return key


def _pem_to_der(csr_pem: object) -> bytes:
    """Size, charset and framing checks, then strict base64 of the single block's body."""
    if not isinstance(csr_pem, str):
        raise InvalidCsr(MSG_NOT_TEXT)
    # Character count is a lower bound on the UTF-8 size: refuse huge input before encoding it.
    if len(csr_pem) > MAX_CSR_PEM_BYTES:
        raise InvalidCsr(MSG_TOO_LARGE)
    if len(csr_pem.encode("utf-8", errors="surrogatepass")) > MAX_CSR_PEM_BYTES:
        raise InvalidCsr(MSG_TOO_LARGE)
    if not csr_pem.isascii():
        raise InvalidCsr(MSG_NOT_ASCII)
    # Exactly one BEGIN and one END marker of any type: a second block (a certificate, a key,
    # another CSR) is refused rather than ignored, so no parser can pick a different block.
    if csr_pem.count("-----BEGIN ") != 1 or csr_pem.count("-----END ") != 1:
        raise InvalidCsr(MSG_PEM_BLOCKS)
    begin = csr_pem.find(_PEM_BEGIN)
    end = csr_pem.find(_PEM_END)
    if begin < 0 or end < begin:
        raise InvalidCsr(MSG_PEM_BLOCKS)
    # Only whitespace may surround the block (no explanatory text either).
    if csr_pem[:begin].strip() or csr_pem[end + len(_PEM_END) :].strip():
        raise InvalidCsr(MSG_PEM_BLOCKS)
    body = csr_pem[begin + len(_PEM_BEGIN) : end]
    if _PEM_BODY_RE.fullmatch(body) is None:
        # Also refuses RFC 1421 headers ("Proc-Type: ...") inside the block.
        raise InvalidCsr(MSG_PEM_BODY)
    compact = body.replace("\r", "").replace("\n", "")
    try:
        der = binascii.a2b_base64(compact, strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidCsr(MSG_PEM_BODY) from None
    # Canonical base64 only (no data after padding, no stray bits): one text per DER.
    if not der or base64.b64encode(der).decode("ascii") != compact:
        raise InvalidCsr(MSG_PEM_BODY)
    return der


def _check_extensions(csr: x509.CertificateSigningRequest) -> None:
    try:
        extensions = list(csr.extensions)
    except (x509.DuplicateExtension, x509.UnsupportedGeneralNameType, ValueError):
        raise InvalidCsr(MSG_EXT_MALFORMED) from None
    if not extensions:
        return
    oids = {extension.oid for extension in extensions}
    if oids.intersection(FEDERATION_OIDS):
        # The grant/user binding is the broker's to write; a CSR asking for it is an attack.
        raise InvalidCsr(MSG_EXT_FEDERATION)
    for extension in extensions:
        value = extension.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            # A client asking to become a CA.
            raise InvalidCsr(MSG_EXT_CA)
    if ExtensionOID.SUBJECT_ALTERNATIVE_NAME in oids:
        # SANs are identities the broker did not vet.
        raise InvalidCsr(MSG_EXT_SAN)
    raise InvalidCsr(MSG_EXT_OTHER)


def _check_subject(csr: x509.CertificateSigningRequest) -> str:
    with warnings.catch_warnings():
        # cryptography warns (UserWarning) while parsing an out-of-range CN length; we refuse
        # that CN below with our own message, so the attacker-triggered warning is noise.
        warnings.filterwarnings("ignore", message="Attribute's length", category=UserWarning)
        try:
            rdns = csr.subject.rdns
        except ValueError:
            raise InvalidCsr(MSG_SUBJECT) from None
    if len(rdns) != 1:
        raise InvalidCsr(MSG_SUBJECT)
    attributes = list(rdns[0])
    if len(attributes) != 1 or attributes[0].oid != NameOID.COMMON_NAME:
        raise InvalidCsr(MSG_SUBJECT)
    value = attributes[0].value
    if not isinstance(value, str):
        raise InvalidCsr(MSG_SUBJECT)
    return _check_common_name(value)


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def validate_csr(csr_pem: str) -> ValidatedCsr:
    """Check a PEM CSR against every rule; raise :class:`InvalidCsr` naming the first failure.

    Rules, in order:

    1. at most :data:`MAX_CSR_PEM_BYTES` bytes (UTF-8), checked before any parsing; ASCII only;
    2. exactly one PEM block, of type ``CERTIFICATE REQUEST``, with only whitespace around it
       and a strictly base64 body (no PEM headers);
    3. the DER parses as a PKCS#10 request;
    4. its self-signature verifies;
    5. the key is EC on SECP256R1 (P-256); RSA, Ed25519, P-384 ... are refused;
    6. the signature algorithm is ecdsa-with-SHA256;
    7. the subject is exactly one RDN holding exactly one CN (no O/OU/...), and the CN matches
       :data:`COMMON_NAME_RE` (1..63 characters);
    8. no extension request at all (specific messages for federation OIDs, CA=true, SAN);
    9. the raw DER contains the OID octets of neither federation extension anywhere
       (defence in depth: e.g. an attribute typed with the federation OID);
    10. no attributes at all (challengePassword, unstructuredName, ... are refused).
    """
    der = _pem_to_der(csr_pem)
    try:
        csr = x509.load_der_x509_csr(der)
    except (ValueError, x509.InvalidVersion):
        # InvalidVersion is not a ValueError: without it a version byte edit escapes as a 500.
        raise InvalidCsr(MSG_PARSE) from None
    signature = csr.signature
    if not der.endswith(b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature):
        # The signature BIT STRING must say "no unused bits": the parser also accepts a count
        # of 1-7 when the last byte's low bits are zero, another encoding of the same request.
        raise InvalidCsr(MSG_PARSE)
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        signature_ok = False
    if not signature_ok:
        # Proof of possession: without it a client could get someone else's key certified.
        raise InvalidCsr(MSG_SIGNATURE)
    try:
        key: object = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidCsr(MSG_KEY_TYPE) from None
    public_key = _check_public_key(key)
    if csr.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
        raise InvalidCsr(MSG_SIGNATURE_ALGORITHM)
    common_name = _check_subject(csr)
    _check_extensions(csr)
    if any(content in der for content in _FEDERATION_OID_CONTENTS):
        # A federation OID hidden anywhere (an attribute, a nested structure) is refused even
        # though the broker never copies from the CSR: no path may smuggle a grant binding.
        raise InvalidCsr(MSG_FEDERATION_OID_BYTES)
    try:
        attributes = list(csr.attributes)
    except ValueError:
        raise InvalidCsr(MSG_ATTRIBUTES) from None
    if attributes:
        raise InvalidCsr(MSG_ATTRIBUTES)
    return ValidatedCsr(csr=csr, public_key=public_key, common_name=common_name)


def make_csr(private_key: ec.EllipticCurvePrivateKey, common_name: str) -> str:
    """Build a PEM CSR that passes :func:`validate_csr` (subject CN only, no extensions).

    Raises :class:`InvalidCsr` if the key is not P-256 or the common name breaks the rules.
    """
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise InvalidCsr(MSG_KEY_TYPE)
    _check_public_key(private_key.public_key())
    _check_common_name(common_name)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(private_key, hashes.SHA256())
    )
    pem = csr.public_bytes(serialization.Encoding.PEM).decode("ascii")
    validate_csr(pem)
    return pem
