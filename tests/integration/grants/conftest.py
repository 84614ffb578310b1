"""Fixtures for the grants service tests: the app in-process on a fresh migrated database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fedcore import pki
from grants.app import create_app
from tests.integration.grants.harness import Db, Harness, make_settings, write_bundle
from tests.support.apps import running


@pytest.fixture(scope="session")
def gateway_ca() -> pki.CaHierarchy:
    return pki.generate_ca_hierarchy("gateway-a")


@pytest.fixture
def ca_bundle_path(gateway_ca: pki.CaHierarchy, tmp_path: Path) -> Path:
    return write_bundle(gateway_ca, tmp_path)


@pytest.fixture
async def harness(
    migrated_db_url: str, ca_bundle_path: Path, gateway_ca: pki.CaHierarchy
) -> AsyncIterator[Harness]:
    db = Db(migrated_db_url)
    token, token_id = db.insert_token("admin")
    settings = make_settings(migrated_db_url, ca_bundle_path)
    app = create_app(settings)
    async with running(app) as client:
        yield Harness(app, client, db, settings, token, token_id, gateway_ca)
