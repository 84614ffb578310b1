"""`mosaic secrets rotate` re-seals every sealed key under the new secrets; old secrets are
needed only until it ran; a blob under an unknown key stops it with nothing changed."""

from __future__ import annotations

import json
import uuid

import pytest

from fedcore.models import ConnectionState
from fedcore.sealing import (
    PURPOSE_CA_INTERMEDIATE_KEY,
    PURPOSE_CA_ROOT_KEY,
    PURPOSE_CONNECTION_KEY,
    Sealer,
    SealingError,
)
from tests.support.cli import _env, mosaic
from tests.support.db import fetch_all
from tests.support.secrets import random_secret


def _insert_connection(url: str, blob: bytes) -> None:
    fetch_all(
        url,
        "INSERT INTO federation_connections (id, name, state, sealed_private_key) "
        "VALUES (%s, %s, %s, %s) RETURNING id",
        (uuid.uuid4(), f"c-{uuid.uuid4().hex[:8]}", ConnectionState.PENDING.value, blob),
    )


def _insert_ca(url: str, sealer: Sealer) -> None:
    for role, purpose in (
        ("root", PURPOSE_CA_ROOT_KEY),
        ("intermediate", PURPOSE_CA_INTERMEDIATE_KEY),
    ):
        fetch_all(
            url,
            "INSERT INTO ca_keypairs (id, role, cert_pem, sealed_private_key, active) "
            "VALUES (%s, %s, 'cert', %s, true) RETURNING id",
            (uuid.uuid4(), role, sealer.seal(f"{role} key".encode(), purpose=purpose)),
        )


def _blobs(url: str) -> dict[str, list[bytes]]:
    return {
        "connections": [
            bytes(b)
            for (b,) in fetch_all(url, "SELECT sealed_private_key FROM federation_connections")
        ],
        "ca": [bytes(b) for (b,) in fetch_all(url, "SELECT sealed_private_key FROM ca_keypairs")],
    }


def _rotate(url: str, **env: str) -> tuple[int, str, str]:
    result = mosaic("secrets", "rotate", "--database-url", url, "--json", env=_env(None, **env))
    return result.returncode, result.stdout, result.stderr


def test_rotation_reseals_everything_under_the_new_secrets(migrated_db_url: str) -> None:
    old_gw, new_gw, old_ca, new_ca = (random_secret() for _ in range(4))
    for _ in range(3):
        _insert_connection(
            migrated_db_url, Sealer(old_gw).seal(b"conn key", purpose=PURPOSE_CONNECTION_KEY)
        )
    _insert_ca(migrated_db_url, Sealer(old_ca))

    code, out, err = _rotate(
        migrated_db_url,
        MOSAIC_GATEWAY_SECRET=new_gw,
        MOSAIC_PREVIOUS_GATEWAY_SECRETS=json.dumps([old_gw]),
        MOSAIC_CA_KEY_SECRET=new_ca,
        MOSAIC_PREVIOUS_CA_KEY_SECRETS=json.dumps([old_ca]),
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["connection_keys"]["resealed"] == 3
    assert report["ca_keys"]["resealed"] == 2

    blobs = _blobs(migrated_db_url)
    for blob in blobs["connections"]:
        assert Sealer(new_gw).unseal(blob, purpose=PURPOSE_CONNECTION_KEY) == b"conn key"
        with pytest.raises(SealingError):
            Sealer(old_gw).unseal(blob, purpose=PURPOSE_CONNECTION_KEY)
    for blob in blobs["ca"]:
        assert not Sealer(new_ca).needs_reseal(blob)
    assert err == ""  # no secret (or anything) on stderr

    again = json.loads(_rotate(migrated_db_url, MOSAIC_GATEWAY_SECRET=new_gw)[1])
    assert again["connection_keys"] == {
        "resealed": 0,
        "already_current": 3,
        "key_id": Sealer(new_gw).key_id,
    }


def test_a_blob_under_an_unknown_key_changes_nothing(migrated_db_url: str) -> None:
    known, stranger, new = random_secret(), random_secret(), random_secret()
    _insert_connection(migrated_db_url, Sealer(known).seal(b"a", purpose=PURPOSE_CONNECTION_KEY))
    _insert_connection(migrated_db_url, Sealer(stranger).seal(b"b", purpose=PURPOSE_CONNECTION_KEY))
    before = _blobs(migrated_db_url)
    code, _, err = _rotate(
        migrated_db_url,
        MOSAIC_GATEWAY_SECRET=new,
        MOSAIC_PREVIOUS_GATEWAY_SECRETS=json.dumps([known]),
    )
    assert code == 1
    assert "unknown_sealing_key" in err
    assert known not in err
    assert new not in err
    assert _blobs(migrated_db_url) == before


def test_no_secret_is_a_usage_error(migrated_db_url: str) -> None:
    code, _, err = _rotate(migrated_db_url)
    assert code == 2
    assert "MOSAIC_GATEWAY_SECRET" in err
