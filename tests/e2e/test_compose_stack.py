"""The docker compose stack comes up and answers through nginx (needs a Docker engine).

pytest-docker's ``docker_services`` fixture runs ``up`` / ``down -v`` with the repo's
docker-compose.yml; the fixtures it depends on are overridden here so that it only starts after a
Docker engine has answered ``docker info`` and the required secrets are in the environment (fresh
random values per run, never on a command line). Without an engine every test here is skipped
with the reason; nothing Docker-related runs at import or collection time.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pytest_docker.plugin import Services

pytestmark = pytest.mark.compose

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
PKI_DIR = "/var/lib/mosaic/pki"
STARTUP_TIMEOUT_SECONDS = 600.0  # the first run builds five images


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _compose_command() -> str | None:
    """`docker compose` (v2 plugin) if present, else the standalone `docker-compose`."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return "docker compose"
    if shutil.which("docker-compose") is not None:
        return "docker-compose"
    return None


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """Skip (with the reason) unless a Docker engine answers; returns the compose command."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no Docker engine: the docker client is not installed")
    try:
        info = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("no Docker engine: `docker info` timed out")
    if info.returncode != 0:
        reason = (info.stderr or info.stdout).strip().splitlines()
        pytest.skip(f"no Docker engine: {reason[-1] if reason else 'docker info failed'}")
    command = _compose_command()
    if command is None:
        pytest.skip("no docker compose: neither `docker compose` nor `docker-compose` found")
    return command


@pytest.fixture(scope="session")
def compose_env(docker_engine: str, docker_ip: str) -> Iterator[dict[str, str]]:
    """The variables docker-compose.yml requires, set for the compose commands of this run."""
    values = {
        "MOSAIC_DB_PASSWORD": secrets.token_urlsafe(24),
        "MOSAIC_APP_DB_PASSWORD": secrets.token_urlsafe(32),
        "MOSAIC_CA_KEY_SECRET": secrets.token_urlsafe(48),
        "MOSAIC_GATEWAY_SECRET": secrets.token_urlsafe(48),
        "MOSAIC_PROXY_SECRET": secrets.token_urlsafe(48),
        "MOSAIC_SERVICE_TOKEN": secrets.token_urlsafe(48),
        "MOSAIC_ADMIN_TOKEN": secrets.token_urlsafe(48),
        "MOSAIC_GATEWAY_NAME": "compose-e2e",
        "MOSAIC_PUBLIC_PORT": str(_free_port()),
        "MOSAIC_ADMIN_PORT": str(_free_port()),
        # nginx's certificate must name the address the tests dial (DOCKER_HOST may be remote).
        "MOSAIC_SERVER_CERT_HOSTS": json.dumps(sorted({"localhost", "127.0.0.1", docker_ip})),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        yield values


# --- pytest-docker fixture overrides (same names, session scope like the plugin's) ----------


@pytest.fixture(scope="session")
def docker_compose_command(docker_engine: str) -> str:
    return docker_engine


@pytest.fixture(scope="session")
def docker_compose_file() -> list[str]:
    return [str(COMPOSE_FILE)]


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return f"mosaic-e2e-{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def docker_setup(compose_env: dict[str, str]) -> list[str]:
    # Not `up --wait`: older compose versions treat the exited one-shots as failures. Readiness
    # is polled through nginx below instead.
    return ["up --build --detach"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down --volumes --remove-orphans"]


# --- the stack -------------------------------------------------------------------------------


def _answers_200(url: str, verify: bool | ssl.SSLContext) -> bool:
    try:
        return httpx.get(url, timeout=3, verify=verify).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def compose_stack(
    docker_services: Services,
    docker_ip: str,
    docker_compose_command: str,
    docker_compose_project_name: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """URLs of the stack's two listeners and the gateway CA bundle (a file) to verify TLS."""
    public = f"https://{docker_ip}:{docker_services.port_for('nginx', 8443)}"
    admin = f"http://{docker_ip}:{docker_services.port_for('nginx', 8080)}"
    docker_services.wait_until_responsive(
        check=lambda: _answers_200(f"{admin}/readyz/grants", verify=False),
        timeout=STARTUP_TIMEOUT_SECONDS,
        pause=2.0,
    )
    # The gateway's own CA bundle, read from the shared pki volume, to verify nginx's TLS.
    bundle = subprocess.run(
        [
            *docker_compose_command.split(),
            "-f",
            str(COMPOSE_FILE),
            "-p",
            docker_compose_project_name,
            "exec",
            "-T",
            "nginx",
            "cat",
            f"{PKI_DIR}/ca.pem",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    ca_file = tmp_path_factory.mktemp("compose") / "ca.pem"
    ca_file.write_text(bundle)
    return {"public": public, "admin": admin, "ca": str(ca_file)}


def _gateway_tls(stack: dict[str, str]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=stack["ca"])


def test_public_listener_reaches_enrollment_over_verified_tls(
    compose_stack: dict[str, str],
) -> None:
    response = httpx.get(
        f"{compose_stack['public']}/readyz/enrollment",
        verify=_gateway_tls(compose_stack),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"


def test_admin_listener_reaches_grants(compose_stack: dict[str, str]) -> None:
    response = httpx.get(f"{compose_stack['admin']}/readyz/grants", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"


def test_verbs_refuse_a_request_without_a_client_certificate(
    compose_stack: dict[str, str],
) -> None:
    response = httpx.get(
        f"{compose_stack['public']}/api/federation/v1/capabilities",
        verify=_gateway_tls(compose_stack),
        timeout=10,
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "client_cert_required"
