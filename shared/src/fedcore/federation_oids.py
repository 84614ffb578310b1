"""The federation X.509 extensions: OIDs, the value codec and identity extraction.

A federation client certificate carries two private extensions, both non-critical, each whose
``extnValue`` is the DER encoding of a UTF8String holding a canonical UUID::

    1.3.6.1.4.1.99999.1  grant id          0x0C 0x24 || "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
    1.3.6.1.4.1.99999.2  subject user id   0x0C 0x24 || "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"

This is the same byte layout the step-ca templates in ``deploy/step-ca/templates`` produce.

The decoder is deliberately strict: one definite-length DER TLV, tag UTF8String, minimal length
encoding, nothing after it, valid UTF-8 and exactly the canonical lowercase hyphenated UUID
text. Anything else is refused, so there is one and only one byte string per identity and no
two parsers (ours, a peer's, an auditor's) can disagree about which grant a certificate names.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509

from fedcore.errors import Unauthorized

GRANT_ID_OID: Final = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")
SUBJECT_USER_ID_OID: Final = x509.ObjectIdentifier("1.3.6.1.4.1.99999.2")
FEDERATION_OIDS: Final = (GRANT_ID_OID, SUBJECT_USER_ID_OID)

TAG_UTF8STRING: Final = 0x0C
TAG_OBJECT_IDENTIFIER: Final = 0x06

# Reason codes carried by MalformedFederationIdentity.reason.
REASON_MISSING_GRANT_ID: Final = "missing_grant_id"
REASON_MISSING_SUBJECT_USER_ID: Final = "missing_subject_user_id"
REASON_DUPLICATE_EXTENSION: Final = "duplicate_extension"
REASON_CRITICAL_EXTENSION: Final = "critical_extension"
REASON_MALFORMED_VALUE: Final = "malformed_value"
REASONS: Final = frozenset(
    {
        REASON_MISSING_GRANT_ID,
        REASON_MISSING_SUBJECT_USER_ID,
        REASON_DUPLICATE_EXTENSION,
        REASON_CRITICAL_EXTENSION,
        REASON_MALFORMED_VALUE,
    }
)

# A canonical UUID is 36 ASCII characters; anything longer is refused before any decoding.
_CANONICAL_UUID_LEN: Final = 36
# re.ASCII so that no Unicode digit class sneaks in; used with fullmatch (``$`` would accept "\n").
_CANONICAL_UUID_RE: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII
)
# Longest long-form length we accept (4 octets = up to 4 GiB); real values here are 36 bytes.
_MAX_LENGTH_OCTETS: Final = 4


class MalformedFederationValue(ValueError):
    """An extension value is not exactly DER UTF8String(canonical UUID).

    The message names the rule that failed and never contains the input bytes.
    """


class MalformedFederationIdentity(Unauthorized):
    """A client certificate does not carry exactly one well-formed grant id and subject user id.

    It is an :class:`~fedcore.errors.Unauthorized` (401): the presented credential cannot
    authenticate anyone. ``reason`` is one of :data:`REASONS`; the message is built from the
    reason only and never echoes certificate content.
    """

    default_code = "client_cert_malformed"  # DESIGN §5 step 3

    def __init__(self, reason: str) -> None:
        if reason not in REASONS:
            raise ValueError("unknown MalformedFederationIdentity reason")
        super().__init__(f"client certificate federation identity is invalid: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class FederationIdentity:
    """Who a federation client certificate speaks for."""

    grant_id: uuid.UUID
    subject_user_id: uuid.UUID


# --------------------------------------------------------------------------------------------
# DER
# --------------------------------------------------------------------------------------------


def _encode_length(length: int) -> bytes:
    """Minimal DER definite length: short form below 128, otherwise long form without padding."""
    if length < 0:
        raise ValueError("length must not be negative")
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _read_tlv(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """Read one DER TLV at ``offset``; return ``(tag, value, next_offset)``.

    Only single-octet tags are supported. Refuses high-tag-number form, indefinite length,
    reserved length octet 0xFF, non-minimal length encodings and lengths past the end of
    ``data``. Raises :class:`MalformedFederationValue`.
    """
    end = len(data)
    if offset < 0 or offset >= end:
        raise MalformedFederationValue("DER: no tag octet")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        # High-tag-number form: never used by the types we read; refusing it keeps one parse.
        raise MalformedFederationValue("DER: multi-octet tags are not supported")
    pos = offset + 1
    if pos >= end:
        raise MalformedFederationValue("DER: no length octet")
    first = data[pos]
    pos += 1
    if first < 0x80:
        length = first
    elif first == 0x80:
        # Indefinite length is BER, not DER; it lets a value's extent depend on its content.
        raise MalformedFederationValue("DER: indefinite length is not allowed")
    elif first == 0xFF:
        raise MalformedFederationValue("DER: reserved length octet")
    else:
        count = first & 0x7F
        if count > _MAX_LENGTH_OCTETS:
            raise MalformedFederationValue("DER: length field too long")
        if pos + count > end:
            raise MalformedFederationValue("DER: length octets past the end")
        length_octets = data[pos : pos + count]
        pos += count
        if length_octets[0] == 0x00:
            # Leading zero octet: a second encoding of the same length (non-canonical).
            raise MalformedFederationValue("DER: non-minimal length encoding")
        length = int.from_bytes(length_octets, "big")
        if length < 0x80:
            # Long form for a length that fits the short form: also a second encoding.
            raise MalformedFederationValue("DER: non-minimal length encoding")
    if length > end - pos:
        raise MalformedFederationValue("DER: value extends past the end")
    return tag, bytes(data[pos : pos + length]), pos + length


def der_encode_oid(oid: x509.ObjectIdentifier) -> bytes:
    """The DER encoding (tag 0x06, length, content) of an OBJECT IDENTIFIER."""
    arcs = [int(part) for part in oid.dotted_string.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39):
        raise ValueError("not an encodable object identifier")
    subids = [arcs[0] * 40 + arcs[1], *arcs[2:]]
    content = bytearray()
    for subid in subids:
        chunk = [subid & 0x7F]
        subid >>= 7
        while subid:
            chunk.append(0x80 | (subid & 0x7F))
            subid >>= 7
        content.extend(reversed(chunk))
    return bytes([TAG_OBJECT_IDENTIFIER]) + _encode_length(len(content)) + bytes(content)


# --------------------------------------------------------------------------------------------
# Value codec
# --------------------------------------------------------------------------------------------


def encode_uuid_utf8string(value: uuid.UUID) -> bytes:
    """DER UTF8String of ``str(value)``: the canonical lowercase hyphenated UUID (36 bytes)."""
    if not isinstance(value, uuid.UUID):
        raise TypeError("value must be a uuid.UUID")
    text = str(value).encode("ascii")
    return bytes([TAG_UTF8STRING]) + _encode_length(len(text)) + text


def decode_uuid_utf8string(der: bytes) -> uuid.UUID:
    """Decode exactly one DER UTF8String holding a canonical UUID.

    Raises :class:`MalformedFederationValue` for anything else, including trailing bytes,
    other string types, non-canonical UUID spellings (uppercase, no hyphens, braces, ``urn:``)
    and invalid UTF-8.
    """
    if not isinstance(der, bytes):
        raise MalformedFederationValue("value must be bytes")
    tag, value, next_offset = _read_tlv(der, 0)
    if next_offset != len(der):
        # Trailing bytes would let two different extension values decode to the same identity.
        raise MalformedFederationValue("DER: trailing bytes after the value")
    if tag != TAG_UTF8STRING:
        # PrintableString/IA5String/OCTET STRING etc. are other encodings of "the same" text.
        raise MalformedFederationValue("value is not a UTF8String")
    if len(value) != _CANONICAL_UUID_LEN:
        raise MalformedFederationValue("value is not a canonical UUID")
    try:
        text = value.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise MalformedFederationValue("value is not valid UTF-8") from None
    if _CANONICAL_UUID_RE.fullmatch(text) is None:
        # uuid.UUID() alone accepts braces, "urn:uuid:", uppercase and missing hyphens.
        raise MalformedFederationValue("value is not a canonical UUID")
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        raise MalformedFederationValue("value is not a canonical UUID") from None
    if str(parsed) != text:
        raise MalformedFederationValue("value is not a canonical UUID")
    return parsed


# --------------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------------


def add_federation_extensions(
    builder: x509.CertificateBuilder, grant_id: uuid.UUID, subject_user_id: uuid.UUID
) -> x509.CertificateBuilder:
    """Return ``builder`` with both federation extensions added, non-critical."""
    return builder.add_extension(
        x509.UnrecognizedExtension(GRANT_ID_OID, encode_uuid_utf8string(grant_id)),
        critical=False,
    ).add_extension(
        x509.UnrecognizedExtension(SUBJECT_USER_ID_OID, encode_uuid_utf8string(subject_user_id)),
        critical=False,
    )


def _decode_extension(extension: x509.Extension[Any]) -> uuid.UUID:
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise MalformedFederationIdentity(REASON_MALFORMED_VALUE)
    try:
        return decode_uuid_utf8string(value.value)
    except MalformedFederationValue:
        raise MalformedFederationIdentity(REASON_MALFORMED_VALUE) from None


def federation_identity_from_extensions(
    extensions: Iterable[x509.Extension[Any]],
) -> FederationIdentity:
    """Build the identity from an iterable of extensions (see :func:`extract_federation_identity`).

    Exposed separately so the counting rules can be applied to any extension list.
    """
    by_oid: dict[x509.ObjectIdentifier, x509.Extension[Any]] = {}
    counts: Counter[x509.ObjectIdentifier] = Counter()
    for extension in extensions:
        counts[extension.oid] += 1
        by_oid[extension.oid] = extension
    if any(count > 1 for count in counts.values()):
        # Two values for one OID: which one is "the" grant would depend on the reader.
        raise MalformedFederationIdentity(REASON_DUPLICATE_EXTENSION)
    grant_ext = by_oid.get(GRANT_ID_OID)
    if grant_ext is None:
        raise MalformedFederationIdentity(REASON_MISSING_GRANT_ID)
    subject_ext = by_oid.get(SUBJECT_USER_ID_OID)
    if subject_ext is None:
        raise MalformedFederationIdentity(REASON_MISSING_SUBJECT_USER_ID)
    if grant_ext.critical or subject_ext.critical:
        # Our CA only issues them non-critical; a critical one did not come from our profile.
        raise MalformedFederationIdentity(REASON_CRITICAL_EXTENSION)
    return FederationIdentity(
        grant_id=_decode_extension(grant_ext),
        subject_user_id=_decode_extension(subject_ext),
    )


def extract_federation_identity(cert: x509.Certificate) -> FederationIdentity:
    """Read the grant id and subject user id from a (chain-verified) client certificate.

    Rules, each mapped to a ``reason`` of :class:`MalformedFederationIdentity`:

    * any extension OID appearing more than once -> ``duplicate_extension`` (cryptography
      raises :class:`x509.DuplicateExtension`; we also count while iterating, in case a
      library version stops raising);
    * no grant id extension -> ``missing_grant_id``; no subject user id extension ->
      ``missing_subject_user_id``;
    * either federation extension marked critical -> ``critical_extension``. Decision: the
      issuance profile makes them non-critical, so a critical one means the certificate did
      not come from our template; we refuse it rather than accept a second profile;
    * a value that is not exactly DER UTF8String(canonical UUID), or an extension list
      cryptography cannot parse -> ``malformed_value``.

    This function does not verify signatures or validity; the TLS layer must have done so.
    """
    try:
        extensions = list(cert.extensions)
    except x509.DuplicateExtension:
        raise MalformedFederationIdentity(REASON_DUPLICATE_EXTENSION) from None
    except (ValueError, x509.UnsupportedGeneralNameType):
        # cryptography could not parse some extension: the certificate is not well-formed.
        raise MalformedFederationIdentity(REASON_MALFORMED_VALUE) from None
    return federation_identity_from_extensions(extensions)
