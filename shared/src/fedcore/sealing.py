"""Sealing secrets at rest (CA intermediate key, connection keys) under the gateway secret.

Construction
------------
* For each gateway secret ``S``::

      key_id = hex(SHA-256(HKDF-SHA256(S, salt=SALT, info="mosaic-sealing/key-id/v1")))[:16]
      key    = HKDF-SHA256(S, salt=SALT, info="mosaic-sealing/aes-256-gcm/v1/key-id=" + key_id)

  The key id is a hash of an HKDF output under a different info label than the key, so it
  reveals nothing about the key and two secrets get different ids.
* AES-256-GCM with a fresh random 96-bit nonce per seal.
* Blob::

      b"MSL1" | len(key_id) (1 byte) | key_id (ASCII) | nonce (12 bytes) | ciphertext || tag

* Additional authenticated data: a label, the header (magic, key id length, key id) and the
  length-prefixed ``purpose``. A blob sealed for one purpose never unseals for another, and
  changing the key id in the header breaks authentication.

Rotation: construct ``Sealer(new_secret, [old_secret, ...])``; blobs sealed under an old
secret still unseal, :meth:`Sealer.needs_reseal` says so, :meth:`Sealer.reseal` moves them to
the current key.

No secret, key or plaintext ever appears in an exception message or a ``repr``.
:class:`SealingError` is deliberately NOT a :class:`~fedcore.errors.DomainError`: a failure to
unseal is a server fault and must reach clients only as the generic ``internal_error``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedcore.secret_strength import MIN_SECRET_LENGTH

MAGIC: Final = b"MSL1"
KEY_ID_LENGTH: Final = 16
NONCE_LENGTH: Final = 12
TAG_LENGTH: Final = 16
KEY_LENGTH: Final = 32

# Fixed domain-separation salt: keys derived here can never equal keys derived from the same
# secret elsewhere in the gateway (tokens, HMACs) that use another salt/label.
_HKDF_SALT: Final = b"mosaic-federation-gateway/sealing/salt/v1"
_KEY_ID_INFO: Final = b"mosaic-sealing/key-id/v1"
_KEY_INFO_PREFIX: Final = b"mosaic-sealing/aes-256-gcm/v1/key-id="
_AAD_LABEL: Final = b"mosaic-sealing/aad/v1"

_KEY_ID_RE: Final = re.compile(rb"[0-9a-f]{16}")
_PURPOSE_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9._:-]{0,126}[a-z0-9])?", re.ASCII)
_HEADER_PREFIX_LENGTH: Final = len(MAGIC) + 1


# What each sealed column holds; the purpose is bound into the AAD, so a blob copied from one
# column to another does not unseal.
PURPOSE_CA_ROOT_KEY: Final = "ca-root-key"
PURPOSE_CA_INTERMEDIATE_KEY: Final = "ca-intermediate-key"
PURPOSE_CONNECTION_KEY: Final = "connection-key"


class SealingError(Exception):
    """A blob could not be unsealed (unknown key, wrong purpose, tampered, truncated...).

    The message is short and fixed; it never contains secrets, keys or plaintext.
    """


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LENGTH, salt=_HKDF_SALT, info=info).derive(
        secret
    )


def _secret_bytes(secret: str) -> bytes:
    if not isinstance(secret, str):
        raise TypeError("sealing secret must be a str")
    if len(secret) < MIN_SECRET_LENGTH:
        # An empty/short secret would make every sealed key guessable.
        raise ValueError(f"sealing secret must be at least {MIN_SECRET_LENGTH} characters")
    try:
        return secret.encode("utf-8")
    except UnicodeEncodeError:
        # The UnicodeEncodeError carries the whole string: do not chain it.
        raise ValueError("sealing secret must be valid Unicode text") from None


def _derive_key_id(secret: bytes) -> str:
    return hashlib.sha256(_hkdf(secret, _KEY_ID_INFO)).hexdigest()[:KEY_ID_LENGTH]


def _check_purpose(purpose: str) -> bytes:
    if not isinstance(purpose, str) or _PURPOSE_RE.fullmatch(purpose) is None:
        raise ValueError("purpose must be 1-128 chars of [a-z0-9._:-], alphanumeric at both ends")
    return purpose.encode("ascii")


def _header(key_id: str) -> bytes:
    raw = key_id.encode("ascii")
    return MAGIC + bytes([len(raw)]) + raw


def _aad(header: bytes, purpose: bytes) -> bytes:
    # Length-prefixed purpose: no two (header, purpose) pairs share an AAD.
    return _AAD_LABEL + header + len(purpose).to_bytes(2, "big") + purpose


def _parse(blob: bytes) -> tuple[str, bytes, bytes, bytes]:
    """Split a blob into ``(key_id, header, nonce, ciphertext_and_tag)`` (not authenticated)."""
    if not isinstance(blob, bytes):
        raise SealingError("sealed blob must be bytes")
    if len(blob) < _HEADER_PREFIX_LENGTH:
        raise SealingError("sealed blob is truncated")
    if blob[: len(MAGIC)] != MAGIC:
        raise SealingError("sealed blob has an unknown format")
    key_id_length = blob[len(MAGIC)]
    if key_id_length != KEY_ID_LENGTH:
        raise SealingError("sealed blob has a malformed key id")
    header_end = _HEADER_PREFIX_LENGTH + key_id_length
    nonce_end = header_end + NONCE_LENGTH
    if len(blob) < nonce_end + TAG_LENGTH:
        raise SealingError("sealed blob is truncated")
    raw_key_id = blob[_HEADER_PREFIX_LENGTH:header_end]
    if _KEY_ID_RE.fullmatch(raw_key_id) is None:
        raise SealingError("sealed blob has a malformed key id")
    return (
        raw_key_id.decode("ascii"),
        blob[:header_end],
        blob[header_end:nonce_end],
        blob[nonce_end:],
    )


class Sealer:
    """Seal and unseal byte strings under keys derived from the gateway secret(s).

    ``current_secret`` seals; ``previous_secrets`` (older gateway secrets, during a rotation)
    only unseal. The secrets themselves are not kept: only derived AES-GCM keys, by key id.
    """

    __slots__ = ("_current", "_keys", "_previous_ids")

    def __init__(self, current_secret: str, previous_secrets: Sequence[str] = ()) -> None:
        if isinstance(previous_secrets, str | bytes):
            # A bare string would be iterated character by character.
            raise TypeError("previous_secrets must be a sequence of secrets, not one secret")
        keys: dict[str, AESGCM] = {}
        ordered: list[str] = []
        for secret in (current_secret, *previous_secrets):
            raw = _secret_bytes(secret)
            key_id = _derive_key_id(raw)
            if key_id in keys:
                continue
            keys[key_id] = AESGCM(_hkdf(raw, _KEY_INFO_PREFIX + key_id.encode("ascii")))
            ordered.append(key_id)
        self._keys = keys
        self._current = ordered[0]
        self._previous_ids = tuple(ordered[1:])

    @property
    def key_id(self) -> str:
        """Key id of the current secret (what new blobs carry)."""
        return self._current

    @property
    def previous_key_ids(self) -> tuple[str, ...]:
        """Key ids of the previous secrets, in the order given (duplicates dropped)."""
        return self._previous_ids

    def __repr__(self) -> str:
        return f"Sealer(key_id={self._current!r}, previous_key_ids={self._previous_ids!r})"

    __str__ = __repr__

    def seal(self, plaintext: bytes, *, purpose: str) -> bytes:
        """Encrypt and authenticate ``plaintext`` for ``purpose`` under the current key."""
        if not isinstance(plaintext, bytes):
            raise TypeError("plaintext must be bytes")
        purpose_raw = _check_purpose(purpose)
        header = _header(self._current)
        # Fresh random nonce per seal; GCM nonce reuse under one key would leak the auth key.
        nonce = os.urandom(NONCE_LENGTH)
        ciphertext = self._keys[self._current].encrypt(nonce, plaintext, _aad(header, purpose_raw))
        return header + nonce + ciphertext

    def unseal(self, blob: bytes, *, purpose: str) -> bytes:
        """Decrypt a blob sealed for ``purpose`` under the current or a previous key.

        Raises :class:`SealingError` for an unknown key id, a wrong purpose, any modification
        or truncation.
        """
        purpose_raw = _check_purpose(purpose)
        key_id, header, nonce, ciphertext = _parse(blob)
        aead = self._keys.get(key_id)
        if aead is None:
            raise SealingError(f"no secret configured for key id {key_id}")
        try:
            return aead.decrypt(nonce, ciphertext, _aad(header, purpose_raw))
        except InvalidTag:
            raise SealingError(
                "sealed blob failed authentication (tampered, truncated or wrong purpose)"
            ) from None

    def key_id_of(self, blob: bytes) -> str:
        """The key id in a blob's header (parsed, not authenticated)."""
        return _parse(blob)[0]

    def needs_reseal(self, blob: bytes) -> bool:
        """True when the blob is not under the current key (header only, not authenticated)."""
        return self.key_id_of(blob) != self._current

    def reseal(self, blob: bytes, *, purpose: str) -> bytes:
        """Unseal (authenticating it) and seal again under the current key with a new nonce."""
        return self.seal(self.unseal(blob, purpose=purpose), purpose=purpose)
