"""Unit tests for fedcore.sealing: AES-256-GCM sealing under HKDF-derived, rotatable keys."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcore.sealing import (
    KEY_ID_LENGTH,
    MAGIC,
    NONCE_LENGTH,
    TAG_LENGTH,
    Sealer,
    SealingError,
)

OLD_SECRET = "Vq7#kLm2pX9!rT4wZs8@bN3yHc6&dF1jGe5$"
NEW_SECRET = "p4Rt8^wQ2!zX7mK9#vB3nL6@cY1hJ5sD0&fG"
OTHER_SECRET = "T9x#Lq2!Wm7@Rz4$Kp8&Vn3^Bc6*Hd1%Jf5s"
PURPOSE = "ca-intermediate-key"
PLAINTEXT = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"

HEADER_LENGTH = len(MAGIC) + 1 + KEY_ID_LENGTH
OVERHEAD = HEADER_LENGTH + NONCE_LENGTH + TAG_LENGTH
PURPOSES = st.from_regex(r"[a-z0-9](?:[a-z0-9._:-]{0,20}[a-z0-9])?", fullmatch=True)


def _sealing_error(sealer: Sealer, blob: Any, purpose: str = PURPOSE) -> str:
    with pytest.raises(SealingError) as info:
        sealer.unseal(blob, purpose=purpose)
    message = str(info.value)
    for secret in (OLD_SECRET, NEW_SECRET, OTHER_SECRET):
        assert secret not in message
        assert secret not in repr(info.value)
    assert PLAINTEXT.decode() not in message
    assert info.value.__cause__ is None
    return message


def test_round_trip() -> None:
    sealer = Sealer(NEW_SECRET)
    blob = sealer.seal(PLAINTEXT, purpose=PURPOSE)
    assert sealer.unseal(blob, purpose=PURPOSE) == PLAINTEXT
    # A fresh Sealer from the same secret (e.g. after a restart) unseals it too.
    assert Sealer(NEW_SECRET).unseal(blob, purpose=PURPOSE) == PLAINTEXT


@given(st.binary(max_size=512), PURPOSES)
def test_round_trip_any_plaintext_and_purpose(plaintext: bytes, purpose: str) -> None:
    sealer = Sealer(NEW_SECRET)
    blob = sealer.seal(plaintext, purpose=purpose)
    assert len(blob) == OVERHEAD + len(plaintext)
    assert sealer.unseal(blob, purpose=purpose) == plaintext


def test_blob_layout() -> None:
    sealer = Sealer(NEW_SECRET)
    blob = sealer.seal(PLAINTEXT, purpose=PURPOSE)
    assert blob[:4] == b"MSL1"
    assert blob[4] == KEY_ID_LENGTH == 16
    assert blob[5:21] == sealer.key_id.encode("ascii")
    assert len(blob) == 4 + 1 + 16 + 12 + len(PLAINTEXT) + 16
    assert sealer.key_id_of(blob) == sealer.key_id


def test_blob_does_not_contain_plaintext() -> None:
    sealer = Sealer(NEW_SECRET)
    blob = sealer.seal(PLAINTEXT, purpose=PURPOSE)
    assert PLAINTEXT not in blob
    assert b"PRIVATE KEY" not in blob
    assert NEW_SECRET.encode() not in blob


def test_nonce_is_fresh_per_seal() -> None:
    sealer = Sealer(NEW_SECRET)
    blobs = {sealer.seal(PLAINTEXT, purpose=PURPOSE) for _ in range(50)}
    assert len(blobs) == 50
    nonces = {blob[HEADER_LENGTH : HEADER_LENGTH + NONCE_LENGTH] for blob in blobs}
    assert len(nonces) == 50


def test_key_id_shape_and_determinism() -> None:
    key_id = Sealer(NEW_SECRET).key_id
    assert re.fullmatch(r"[0-9a-f]{16}", key_id)
    assert Sealer(NEW_SECRET).key_id == key_id
    assert Sealer(OLD_SECRET).key_id != key_id
    assert Sealer(OTHER_SECRET).key_id not in {key_id, Sealer(OLD_SECRET).key_id}
    # Not a plain hash of the secret (so it cannot be checked against guesses offline cheaply
    # by a naive SHA-256 dictionary either).
    assert key_id != hashlib.sha256(NEW_SECRET.encode()).hexdigest()[:16]


def test_key_id_pinned_to_construction() -> None:
    """Changing salt/labels would orphan every sealed blob: pin the derivation."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from fedcore import sealing

    material = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=sealing._HKDF_SALT,
        info=b"mosaic-sealing/key-id/v1",
    ).derive(NEW_SECRET.encode())
    assert Sealer(NEW_SECRET).key_id == hashlib.sha256(material).hexdigest()[:16]


def test_wrong_purpose_fails() -> None:
    sealer = Sealer(NEW_SECRET)
    blob = sealer.seal(PLAINTEXT, purpose="ca-intermediate-key")
    message = _sealing_error(sealer, blob, purpose="connection-key")
    assert "failed authentication" in message
    assert sealer.unseal(blob, purpose="ca-intermediate-key") == PLAINTEXT


@given(PURPOSES, PURPOSES)
def test_purposes_never_cross(first: str, second: str) -> None:
    sealer = Sealer(NEW_SECRET)
    blob = sealer.seal(PLAINTEXT, purpose=first)
    if first == second:
        assert sealer.unseal(blob, purpose=second) == PLAINTEXT
    else:
        assert "failed authentication" in _sealing_error(sealer, blob, purpose=second)


@settings(max_examples=300)
@given(st.data())
def test_tampering_any_byte_fails(data: st.DataObject) -> None:
    sealer = Sealer(NEW_SECRET, [OLD_SECRET])
    blob = bytearray(sealer.seal(PLAINTEXT, purpose=PURPOSE))
    index = data.draw(st.integers(min_value=0, max_value=len(blob) - 1), label="index")
    blob[index] ^= data.draw(st.integers(min_value=1, max_value=255), label="xor")
    _sealing_error(sealer, bytes(blob))


def test_tampering_specific_regions_reports_the_rule() -> None:
    sealer = Sealer(NEW_SECRET)
    blob = sealer.seal(PLAINTEXT, purpose=PURPOSE)

    def flipped(index: int, mask: int = 0x01) -> bytes:
        edited = bytearray(blob)
        edited[index] ^= mask
        return bytes(edited)

    assert "unknown format" in _sealing_error(sealer, flipped(0))
    assert "malformed key id" in _sealing_error(sealer, flipped(4))
    assert "malformed key id" in _sealing_error(sealer, flipped(5, 0x80))
    assert "failed authentication" in _sealing_error(sealer, flipped(HEADER_LENGTH))
    assert "failed authentication" in _sealing_error(sealer, flipped(HEADER_LENGTH + 12))
    assert "failed authentication" in _sealing_error(sealer, flipped(len(blob) - 1))


@given(st.data())
def test_every_truncation_fails(data: st.DataObject) -> None:
    sealer = Sealer(NEW_SECRET)
    blob = sealer.seal(PLAINTEXT, purpose=PURPOSE)
    cut = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
    _sealing_error(sealer, blob[:cut])


def test_truncation_messages() -> None:
    sealer = Sealer(NEW_SECRET)
    blob = sealer.seal(b"", purpose=PURPOSE)
    assert len(blob) == OVERHEAD
    assert sealer.unseal(blob, purpose=PURPOSE) == b""
    assert "truncated" in _sealing_error(sealer, b"")
    assert "truncated" in _sealing_error(sealer, blob[:4])
    assert "truncated" in _sealing_error(sealer, blob[:-1])
    assert "truncated" in _sealing_error(sealer, blob[:HEADER_LENGTH])


def test_appended_bytes_fail() -> None:
    sealer = Sealer(NEW_SECRET)
    blob = sealer.seal(PLAINTEXT, purpose=PURPOSE)
    assert "failed authentication" in _sealing_error(sealer, blob + b"\x00")


def test_header_key_id_is_authenticated() -> None:
    """Rewriting the key id to another configured key's id is detected."""
    sealer = Sealer(NEW_SECRET, [OLD_SECRET])
    blob = sealer.seal(PLAINTEXT, purpose=PURPOSE)
    old_id = Sealer(OLD_SECRET).key_id
    swapped = blob.replace(sealer.key_id.encode(), old_id.encode(), 1)
    assert sealer.key_id_of(swapped) == old_id
    assert "failed authentication" in _sealing_error(sealer, swapped)


def test_rotation() -> None:
    old_blob = Sealer(OLD_SECRET).seal(PLAINTEXT, purpose=PURPOSE)
    rotated = Sealer(NEW_SECRET, [OLD_SECRET])
    assert rotated.key_id == Sealer(NEW_SECRET).key_id
    assert rotated.previous_key_ids == (Sealer(OLD_SECRET).key_id,)

    assert rotated.unseal(old_blob, purpose=PURPOSE) == PLAINTEXT
    assert rotated.key_id_of(old_blob) == Sealer(OLD_SECRET).key_id
    assert rotated.needs_reseal(old_blob) is True

    new_blob = rotated.reseal(old_blob, purpose=PURPOSE)
    assert rotated.key_id_of(new_blob) == rotated.key_id
    assert rotated.needs_reseal(new_blob) is False
    # The old secret is no longer needed for the resealed blob...
    assert Sealer(NEW_SECRET).unseal(new_blob, purpose=PURPOSE) == PLAINTEXT
    # ...and without it, the old blob is unreadable.
    assert "no secret configured" in _sealing_error(Sealer(NEW_SECRET), old_blob)


def test_reseal_keeps_purpose_binding() -> None:
    rotated = Sealer(NEW_SECRET, [OLD_SECRET])
    old_blob = Sealer(OLD_SECRET).seal(PLAINTEXT, purpose=PURPOSE)
    with pytest.raises(SealingError):
        rotated.reseal(old_blob, purpose="connection-key")
    new_blob = rotated.reseal(old_blob, purpose=PURPOSE)
    assert "failed authentication" in _sealing_error(rotated, new_blob, purpose="connection-key")


def test_reseal_of_current_blob_gives_fresh_nonce() -> None:
    sealer = Sealer(NEW_SECRET)
    blob = sealer.seal(PLAINTEXT, purpose=PURPOSE)
    again = sealer.reseal(blob, purpose=PURPOSE)
    assert again != blob
    assert sealer.unseal(again, purpose=PURPOSE) == PLAINTEXT


def test_unknown_key_id_fails() -> None:
    blob = Sealer(OTHER_SECRET).seal(PLAINTEXT, purpose=PURPOSE)
    sealer = Sealer(NEW_SECRET, [OLD_SECRET])
    message = _sealing_error(sealer, blob)
    assert message == f"no secret configured for key id {Sealer(OTHER_SECRET).key_id}"
    assert sealer.needs_reseal(blob) is True


def test_duplicate_secrets_are_collapsed() -> None:
    sealer = Sealer(NEW_SECRET, [NEW_SECRET, OLD_SECRET, OLD_SECRET])
    assert sealer.previous_key_ids == (Sealer(OLD_SECRET).key_id,)


@pytest.mark.parametrize(
    "blob", [b"", b"MSL", b"MSL2" + b"\x10" + b"0" * 60, b"\x00" * 64, "MSL1", bytearray(64)]
)
def test_garbage_blobs_fail(blob: Any) -> None:
    sealer = Sealer(NEW_SECRET)
    _sealing_error(sealer, blob)
    with pytest.raises(SealingError):
        sealer.key_id_of(blob)
    with pytest.raises(SealingError):
        sealer.needs_reseal(blob)


def test_non_hex_key_id_is_refused() -> None:
    blob = MAGIC + b"\x10" + b"ABCDEF0123456789" + b"\x00" * (NONCE_LENGTH + TAG_LENGTH)
    assert "malformed key id" in _sealing_error(Sealer(NEW_SECRET), blob)


@settings(max_examples=300)
@given(st.binary(max_size=128))
def test_arbitrary_bytes_only_raise_sealing_error(blob: bytes) -> None:
    _sealing_error(Sealer(NEW_SECRET), blob)


def test_repr_and_str_show_only_key_ids() -> None:
    sealer = Sealer(NEW_SECRET, [OLD_SECRET])
    for text in (repr(sealer), str(sealer), f"{sealer}", f"{sealer!r}"):
        assert NEW_SECRET not in text
        assert OLD_SECRET not in text
        assert sealer.key_id in text
        assert Sealer(OLD_SECRET).key_id in text
    assert repr(sealer) == (
        f"Sealer(key_id='{sealer.key_id}', previous_key_ids=('{Sealer(OLD_SECRET).key_id}',))"
    )


def test_sealer_keeps_no_secret_attribute() -> None:
    sealer = Sealer(NEW_SECRET, [OLD_SECRET])
    assert not hasattr(sealer, "__dict__")
    for name in Sealer.__slots__:
        value = getattr(sealer, name)
        assert NEW_SECRET not in repr(value)
        assert OLD_SECRET not in repr(value)


def test_short_secret_is_refused_without_echo() -> None:
    with pytest.raises(ValueError, match="at least") as info:
        Sealer("short-but-secret")
    assert "short-but-secret" not in str(info.value)
    with pytest.raises(ValueError, match="at least"):
        Sealer(NEW_SECRET, ["x"])


def test_bad_secret_types_are_refused() -> None:
    with pytest.raises(TypeError):
        Sealer(NEW_SECRET, OLD_SECRET)
    with pytest.raises(TypeError):
        Sealer(NEW_SECRET.encode())  # type: ignore[arg-type]


def test_unencodable_secret_is_refused_without_echo() -> None:
    secret = NEW_SECRET + "\ud800"
    with pytest.raises(ValueError, match="valid Unicode") as info:
        Sealer(secret)
    assert NEW_SECRET not in str(info.value)
    assert info.value.__cause__ is None


@pytest.mark.parametrize("purpose", ["", "Connection-Key", "a b", "-x", "x-", "\u00e9", "a" * 129])
def test_invalid_purpose_is_a_programming_error(purpose: str) -> None:
    sealer = Sealer(NEW_SECRET)
    with pytest.raises(ValueError, match="purpose"):
        sealer.seal(PLAINTEXT, purpose=purpose)
    blob = sealer.seal(PLAINTEXT, purpose=PURPOSE)
    with pytest.raises(ValueError, match="purpose"):
        sealer.unseal(blob, purpose=purpose)


def test_plaintext_must_be_bytes() -> None:
    with pytest.raises(TypeError):
        Sealer(NEW_SECRET).seal("text", purpose=PURPOSE)  # type: ignore[arg-type]
