"""Each service's create_app: health, readiness against real Postgres, the error envelope,
request ids."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

import ca_broker.app
import ca_broker.settings
import enrollment.app
import enrollment.settings
import grants.app
import grants.settings
import verbs.app
import verbs.settings
from fedcore import pki
from tests.support.apps import running
from tests.support.secrets import random_secret

UNREACHABLE_DB = "postgresql+psycopg://nobody:nothing@127.0.0.1:9/none"


def _settings_kwargs(db_url: str) -> dict[str, Any]:
    return {
        "db": {"url": db_url, "startup_wait_seconds": 0, "connect_timeout_seconds": 1},
        "secrets": {
            "gateway_secret": random_secret(),
            "proxy_secret": random_secret(),
            "service_token": random_secret(),
        },
    }


def _enrollment(db_url: str) -> FastAPI:
    return enrollment.app.create_app(enrollment.settings.Settings(**_settings_kwargs(db_url)))


def _grants(db_url: str) -> FastAPI:
    return grants.app.create_app(grants.settings.Settings(**_settings_kwargs(db_url)))


def _verbs(db_url: str) -> FastAPI:
    bundle = Path(tempfile.mkdtemp(prefix="mosaic-test-verbs-")) / "client-ca.pem"
    hierarchy = pki.generate_ca_hierarchy("verbs-test")
    bundle.write_text(pki.cert_pem(hierarchy.root_cert) + pki.cert_pem(hierarchy.intermediate_cert))
    return verbs.app.create_app(
        verbs.settings.Settings(ca_bundle_path=str(bundle), **_settings_kwargs(db_url))
    )


def _ca_broker(db_url: str) -> FastAPI:
    pki_dir = tempfile.mkdtemp(prefix="mosaic-test-pki-")
    return ca_broker.app.create_app(
        ca_broker.settings.Settings(
            pki_dir=pki_dir, ca_key_secret=random_secret(), **_settings_kwargs(db_url)
        )
    )


APP_FACTORIES: dict[str, Callable[[str], FastAPI]] = {
    "enrollment": _enrollment,
    "grants": _grants,
    "verbs": _verbs,
    "ca_broker": _ca_broker,
}
SIMPLE_APPS = ["enrollment", "grants", "verbs"]


@pytest.mark.parametrize("service", list(APP_FACTORIES))
async def test_healthz_and_readyz_answer_with_a_reachable_database(
    service: str, migrated_db_url: str
) -> None:
    async with running(APP_FACTORIES[service](migrated_db_url)) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


@pytest.mark.parametrize("service", SIMPLE_APPS)
async def test_readyz_is_503_with_a_stable_code_when_the_database_is_gone(service: str) -> None:
    async with running(APP_FACTORIES[service](UNREACHABLE_DB)) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert health.status_code == 200  # alive, just not ready
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "database_unavailable"


@pytest.mark.parametrize("service", SIMPLE_APPS)
async def test_unknown_route_answers_the_json_error_envelope(
    service: str, migrated_db_url: str
) -> None:
    async with running(APP_FACTORIES[service](migrated_db_url)) as client:
        response = await client.get("/no/such/route", headers={"X-Request-Id": "req-12345678"})
    assert response.status_code == 404
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == "not_found"
    assert body["error"]["request_id"] == "req-12345678"
    assert response.headers["x-request-id"] == "req-12345678"


async def test_unsafe_request_id_is_replaced_not_echoed(migrated_db_url: str) -> None:
    async with running(_grants(migrated_db_url)) as client:
        response = await client.get("/nothing", headers={"X-Request-Id": "bad id\twith spaces"})
    request_id = response.json()["error"]["request_id"]
    assert request_id != "bad id\twith spaces"
    assert len(request_id) == 32
    assert response.headers["x-request-id"] == request_id


@pytest.mark.parametrize("service", SIMPLE_APPS)
async def test_openapi_is_published(service: str, migrated_db_url: str) -> None:
    async with running(APP_FACTORIES[service](migrated_db_url)) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert "/readyz" in response.json()["paths"]


@pytest.mark.parametrize("service", ["enrollment", "grants", "ca_broker"])
async def test_a_secret_the_service_does_not_use_is_named_in_a_warning_at_start(
    service: str, migrated_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # _settings_kwargs gives all three shared secrets; these services use fewer.
    app = APP_FACTORIES[service](migrated_db_url)
    async with running(app) as client:
        assert (await client.get("/healthz")).status_code == 200
    [warning] = [r for r in caplog.records if r.name == "fedcore.appkit"]
    assert warning.levelname == "WARNING"
    unused: list[str] = warning.unused  # type: ignore[attr-defined]
    assert (
        unused
        == {
            "enrollment": ["secrets.gateway_secret", "secrets.proxy_secret"],
            "grants": ["secrets.proxy_secret"],
            "ca_broker": ["secrets.gateway_secret", "secrets.proxy_secret"],
        }[service]
    )
    given = app.state.settings.secrets
    for name in ("gateway_secret", "proxy_secret", "service_token"):
        assert given.value(name) not in caplog.text  # names only, never a value


async def test_the_verbs_use_every_shared_secret_and_warn_of_none(
    migrated_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(APP_FACTORIES["verbs"](migrated_db_url)) as client:
        assert (await client.get("/healthz")).status_code == 200
    assert not [r for r in caplog.records if r.name == "fedcore.appkit"]
