"""`mosaic dev seed` fills a database with the sample world; `mosaic ca init` creates the CA."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tests.support.cli import _env, mosaic
from tests.support.db import fetch_all
from tests.support.secrets import random_secret


def test_dev_seed_inserts_every_visibility_class(migrated_db_url: str) -> None:
    result = mosaic(
        "dev",
        "seed",
        "--database-url",
        migrated_db_url,
        "--prefix",
        "x-",
        "--json",
        env=_env(None),
    )
    assert result.returncode == 0, result.stderr
    world = json.loads(result.stdout)
    assert set(world["users"]) == {"alice", "bob", "carol"}
    names = {n for (n,) in fetch_all(migrated_db_url, "SELECT username FROM users")}
    assert names == {"x-alice", "x-bob", "x-carol"}
    per_class = world["rows"]["tasks"]
    assert per_class["personal"] == 3
    assert per_class["finance"] == 2
    (tasks,) = fetch_all(migrated_db_url, "SELECT count(*) FROM tasks")[0]
    assert tasks == sum(per_class.values())


def test_ca_init_creates_the_ca_once(migrated_db_url: str) -> None:
    pki_dir = Path(tempfile.mkdtemp(prefix="mosaic-test-cainit-"))
    env = _env(
        None,
        FED_CA_BROKER_DB__URL=migrated_db_url,
        FED_CA_BROKER_PKI_DIR=str(pki_dir),
        FED_CA_BROKER_CA_KEY_SECRET=random_secret(),
        FED_CA_BROKER_SECRETS__GATEWAY_SECRET=random_secret(),
        FED_CA_BROKER_SECRETS__PROXY_SECRET=random_secret(),
        FED_CA_BROKER_SECRETS__SERVICE_TOKEN=random_secret(),
    )
    first = mosaic("ca", "init", env=env)
    assert first.returncode == 0, first.stderr
    assert {p.name for p in pki_dir.iterdir()} >= {"ca.pem", "crl.pem", "server.pem", "server.key"}
    again = mosaic("ca", "init", env=env)
    assert again.returncode == 0, again.stderr
    assert fetch_all(migrated_db_url, "SELECT count(*) FROM ca_keypairs")[0][0] == 2
