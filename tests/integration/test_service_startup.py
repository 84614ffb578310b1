"""A service with bad configuration stops at start with one clear line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.secrets import random_secret, secrets_env

SERVICES = {
    "ca_broker": "FED_CA_BROKER_",
    "enrollment": "FED_ENROLLMENT_",
    "grants": "FED_GRANTS_",
    "verbs": "FED_VERBS_",
}


def _run(service: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FED_")}
    # verbs needs its CA bundle setting to get as far as the database check
    clean["FED_VERBS_CA_BUNDLE_PATH"] = "/nonexistent/client-ca.pem"
    clean["FED_CA_BROKER_CA_KEY_SECRET"] = random_secret()
    return subprocess.run(
        [sys.executable, "-m", service],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("service", list(SERVICES))
def test_placeholder_secret_stops_the_service_with_one_line(service: str) -> None:
    prefix = SERVICES[service]
    env = secrets_env(prefix)
    env[f"{prefix}SECRETS__GATEWAY_SECRET"] = "changeme"
    env[f"{prefix}DB__URL"] = "postgresql+psycopg://u:p@127.0.0.1:9/x"
    result = _run(service, env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "secrets.gateway_secret" in lines[0]
    assert "changeme" not in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("service", "secret"),
    [
        ("enrollment", "service_token"),
        ("grants", "gateway_secret"),
        ("verbs", "proxy_secret"),
        ("ca_broker", "service_token"),
    ],
)
def test_missing_secret_stops_the_service_with_one_line(service: str, secret: str) -> None:
    prefix = SERVICES[service]
    env = secrets_env(prefix)
    del env[f"{prefix}SECRETS__{secret.upper()}"]
    env[f"{prefix}DB__URL"] = "postgresql+psycopg://u:p@127.0.0.1:9/x"
    result = _run(service, env)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"invalid configuration: missing secrets.{secret} (required)" in result.stderr


def test_an_unparseable_setting_stops_the_service_with_one_line() -> None:
    prefix = SERVICES["grants"]
    env = secrets_env(prefix)
    env[f"{prefix}SECRETS__PREVIOUS_GATEWAY_SECRETS"] = '["not-closed'
    env[f"{prefix}DB__URL"] = "postgresql+psycopg://u:p@127.0.0.1:9/x"
    result = _run("grants", env)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "secrets" in result.stderr
    assert "not-closed" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("service", list(SERVICES))
def test_unreachable_database_stops_the_service_with_one_line(service: str) -> None:
    prefix = SERVICES[service]
    env = secrets_env(prefix)
    env[f"{prefix}DB__URL"] = "postgresql+psycopg://mosaic:pw-not-shown@127.0.0.1:9/mosaic"
    env[f"{prefix}DB__STARTUP_WAIT_SECONDS"] = "1"
    result = _run(service, env)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "database unreachable" in lines[0]
    assert "pw-not-shown" not in result.stderr
