"""One gateway's native topology: Postgres → migrations → CA init → four services → nginx.

``up`` is idempotent (secrets and the cluster are reused; processes still alive are kept) and
writes ``<state>/state.json``, the interface tests, scripts and the CLI read. ``down`` stops the
recorded processes (and only those) and checks that their ports are closed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devstack import nginx
from devstack.postgres import PostgresCluster
from devstack.processes import ProcessRecord, spawn, stop
from fedcore.db_roles import DEFAULT_APP_ROLE, app_url
from fedcore.files import write_atomically

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_STATE_ROOT = REPO_ROOT / ".devstack"
SERVICES = ("ca_broker", "enrollment", "grants", "verbs")
ENV_PREFIX = {
    "ca_broker": "FED_CA_BROKER_",
    "enrollment": "FED_ENROLLMENT_",
    "grants": "FED_GRANTS_",
    "verbs": "FED_VERBS_",
}
# The shared secrets each service is given: exactly its Settings.needs_secrets (a test keeps
# the two equal; docs/security.md). The broker's CA-key secret is passed to it alone, below.
SERVICE_SECRETS = {
    "ca_broker": ("service_token",),
    "enrollment": ("service_token",),
    "grants": ("gateway_secret", "service_token"),
    "verbs": ("gateway_secret", "proxy_secret", "service_token"),
}


@dataclass(frozen=True)
class GatewayPorts:
    public: int = 8443
    admin: int = 8080
    postgres: int = 5432
    ca_broker: int = 9101
    enrollment: int = 9102
    grants: int = 9103
    verbs: int = 9104

    def service(self, name: str) -> int:
        port: int = getattr(self, name)
        return port


@dataclass(frozen=True)
class GatewaySpec:
    name: str
    host: str
    state_dir: Path
    ports: GatewayPorts = field(default_factory=GatewayPorts)

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def public_url(self) -> str:
        return f"https://{self.host}:{self.ports.public}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.ports.admin}"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def postgres(self) -> PostgresCluster:
        return PostgresCluster(self.state_dir / "postgres", self.host, self.ports.postgres)


def gateway_specs(count: int, state_root: Path, first_host: str = "127.0.0.2") -> list[GatewaySpec]:
    base = first_host.rsplit(".", 1)
    names = "abcdefgh"
    return [
        GatewaySpec(
            name=names[i],
            host=f"{base[0]}.{int(base[1]) + i}",
            state_dir=state_root / names[i],
        )
        for i in range(count)
    ]


def spec_from_state(state_dir: Path) -> GatewaySpec:
    """Rebuild a gateway's spec from what `up` wrote, so `down` needs no flags."""
    state: dict[str, Any] = json.loads((state_dir / "state.json").read_text())
    ports = state.get("ports", {})
    return GatewaySpec(
        name=str(state["name"]),
        host=str(state["host"]),
        state_dir=state_dir,
        ports=GatewayPorts(**{k: int(v) for k, v in ports.items()}),
    )


# --------------------------------------------------------------------------------------------


def _load_or_make_secrets(spec: GatewaySpec) -> dict[str, str]:
    path = spec.state_dir / "secrets.json"
    if path.exists():
        loaded: dict[str, str] = json.loads(path.read_text())
        changed = False
        if "ca_key_secret" not in loaded:
            # A state folder from before the CA had its own sealing secret: its CA keys are
            # sealed with the gateway secret, which the broker keeps as a previous secret.
            loaded["ca_key_secret"] = secrets.token_urlsafe(48)
            loaded["legacy_ca_key_secret"] = loaded["gateway_secret"]
            changed = True
        if "app_db_password" not in loaded:
            # From before the services had a database role of their own (fedcore.db_roles):
            # the next migrate step creates it.
            loaded["app_db_password"] = secrets.token_urlsafe(32)
            changed = True
        if changed:
            write_atomically(path, json.dumps(loaded, indent=2), mode=0o600)
        return loaded
    values = {
        "gateway_secret": secrets.token_urlsafe(48),
        "ca_key_secret": secrets.token_urlsafe(48),
        "proxy_secret": secrets.token_urlsafe(48),
        "service_token": secrets.token_urlsafe(48),
        "db_password": secrets.token_urlsafe(24),
        "app_db_password": secrets.token_urlsafe(32),
        "admin_token": secrets.token_hex(32),
    }
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(values, indent=2), mode=0o600)
    return values


# Setting names that carry secrets (SECRETS__*, CA_KEY_SECRET, *_PASSWORD, provisioner keys, …)
# or the database URL (its password): never taken from the caller's environment.
_SECRET_BEARING = re.compile(r"SECRET|PASSWORD|TOKEN|KEY|DB__", re.IGNORECASE)


def service_environment(spec: GatewaySpec, secret: dict[str, str], service: str) -> dict[str, str]:
    prefix = ENV_PREFIX[service]
    # The services' own role (fedcore.db_roles): rows, not the schema, the audit log append-only.
    db_url = app_url(
        spec.postgres.url(secret["db_password"], "mosaic"),
        DEFAULT_APP_ROLE,
        secret["app_db_password"],
    )
    # The launcher's own environment, minus every setting or secret a service must get only
    # from here: FED_* (service settings) and MOSAIC_* (the CLI's and the launcher's variables,
    # e.g. an exported MOSAIC_GATEWAY_SECRET or MOSAIC_ADMIN_TOKEN).
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FED_", "MOSAIC_")) and key not in {"PYTHONPATH"}
    }
    # ... plus the caller's settings for this service alone (its own prefix, e.g.
    # FED_VERBS_FANOUT_SOURCE_TIMEOUT_SECONDS), never anything secret-bearing: the launcher
    # makes every secret itself, and what it sets below wins.
    env.update(
        {
            key: value
            for key, value in os.environ.items()
            if key.startswith(prefix) and not _SECRET_BEARING.search(key.removeprefix(prefix))
        }
    )
    env.update(
        {
            f"{prefix}BIND_HOST": spec.host,
            f"{prefix}BIND_PORT": str(spec.ports.service(service)),
            f"{prefix}GATEWAY_NAME": spec.name,
            f"{prefix}DB__URL": db_url,
            "PYTHONUNBUFFERED": "1",
        }
    )
    for name in SERVICE_SECRETS[service]:
        env[f"{prefix}SECRETS__{name.upper()}"] = secret[name]
    broker_url = f"http://{spec.host}:{spec.ports.ca_broker}"
    if service == "ca_broker":
        env[f"{prefix}CA_KEY_SECRET"] = secret["ca_key_secret"]  # the broker's alone
        if "legacy_ca_key_secret" in secret:
            env[f"{prefix}PREVIOUS_CA_KEY_SECRETS"] = json.dumps([secret["legacy_ca_key_secret"]])
        env[f"{prefix}PKI_DIR"] = str(spec.pki_dir)
        env[f"{prefix}SERVER_CERT_HOSTS"] = json.dumps([spec.host, "localhost"])
        env[f"{prefix}NGINX_PID_FILE"] = str(spec.state_dir / "nginx" / "run" / "nginx.pid")
    elif service == "enrollment" or service == "grants":
        env[f"{prefix}CA_BROKER_URL"] = broker_url
        env[f"{prefix}PUBLIC_URL"] = spec.public_url
        if service == "grants":
            # Its root's fingerprint is pinned in enrollment URLs (#ca_fp=...).
            env[f"{prefix}CA_BUNDLE_PATH"] = str(spec.pki_dir / "ca.pem")
    elif service == "verbs":
        env[f"{prefix}CA_BUNDLE_PATH"] = str(spec.pki_dir / "client-ca.pem")
        env[f"{prefix}CA_BROKER_URL"] = broker_url  # renewal: POST /api/federation/v1/renew
        if os.environ.get("MOSAIC_VERBS_WORKERS"):  # default: one worker per available core
            env[f"{prefix}WORKERS"] = os.environ["MOSAIC_VERBS_WORKERS"]
    return env


def _run_python(args: list[str], env: dict[str, str], what: str) -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed: {(result.stderr or result.stdout).strip()[-2000:]}")


def _wait_http(url: str, record: ProcessRecord | None, log_file: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if record is not None and not record.is_alive():
            tail = log_file.read_text(errors="replace")[-1500:] if log_file.exists() else ""
            raise RuntimeError(f"{record.name} exited during start:\n{tail}")
        try:
            response = httpx.get(url, timeout=2, verify=False)  # noqa: S501 - readiness probe
            if response.status_code == 200:
                return
            last_error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last_error = type(exc).__name__
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout:g}s ({last_error})")


def read_state(spec: GatewaySpec) -> dict[str, Any]:
    if not spec.state_file.exists():
        return {}
    loaded: dict[str, Any] = json.loads(spec.state_file.read_text())
    return loaded


def records_of(state: dict[str, Any]) -> dict[str, ProcessRecord]:
    return {
        name: ProcessRecord.from_json(data) for name, data in state.get("processes", {}).items()
    }


def _write_state(
    spec: GatewaySpec, secret: dict[str, str], records: dict[str, ProcessRecord]
) -> None:
    state = {
        "name": spec.name,
        "host": spec.host,
        "public_url": spec.public_url,
        "admin_url": spec.admin_url,
        "admin_token": secret["admin_token"],
        "ca_bundle": str(spec.pki_dir / "ca.pem"),
        "client_ca": str(spec.pki_dir / "client-ca.pem"),
        "crl": str(spec.pki_dir / "crl.pem"),
        "server_cert": str(spec.pki_dir / "server.pem"),
        "database_url": spec.postgres.url(secret["db_password"], "mosaic"),
        "service_urls": {
            name: f"http://{spec.host}:{spec.ports.service(name)}" for name in SERVICES
        },
        "ports": {
            "public": spec.ports.public,
            "admin": spec.ports.admin,
            "postgres": spec.ports.postgres,
            **{name: spec.ports.service(name) for name in SERVICES},
        },
        "logs": str(spec.log_dir),
        "processes": {name: record.to_json() for name, record in records.items()},
        "pids": {name: record.pid for name, record in records.items()},
    }
    # 0600: it holds the admin token and the database password.
    write_atomically(spec.state_file, json.dumps(state, indent=2), mode=0o600)


def up(spec: GatewaySpec) -> dict[str, Any]:
    secret = _load_or_make_secrets(spec)
    spec.log_dir.mkdir(parents=True, exist_ok=True)
    records = {name: r for name, r in records_of(read_state(spec)).items() if r.is_alive()}

    cluster = spec.postgres
    if not cluster.initialised():
        cluster.init(secret["db_password"])
    records["postgres"] = ProcessRecord.of("postgres", cluster.start())
    cluster.create_database(secret["db_password"], "mosaic")
    _write_state(spec, secret, records)  # from here on, `down` can clean up a failed start

    base_env = service_environment(spec, secret, "ca_broker")
    _run_python(
        ["-m", "devstack.bootstrap", "migrate"],
        {
            **base_env,
            "MOSAIC_DATABASE_URL": spec.postgres.url(secret["db_password"], "mosaic"),
            "MOSAIC_APP_DB_PASSWORD": secret["app_db_password"],
        },
        "migrations",
    )
    _run_python(["-m", "ca_broker", "init"], base_env, "CA init")
    _run_python(
        ["-m", "devstack.bootstrap", "admin-token"],
        {
            **base_env,
            "MOSAIC_DATABASE_URL": spec.postgres.url(secret["db_password"], "mosaic"),
            "MOSAIC_ADMIN_TOKEN": secret["admin_token"],
        },
        "admin token",
    )

    # Start the services together (each spends most of its start importing), then wait for all.
    started = []
    for service in SERVICES:
        if service in records:
            continue
        records[service] = spawn(
            service,
            [sys.executable, "-m", service],
            service_environment(spec, secret, service),
            spec.log_dir / f"{service}.log",
        )
        started.append(service)
    _write_state(spec, secret, records)
    for service in started:
        _wait_http(
            f"http://{spec.host}:{spec.ports.service(service)}/readyz",
            records[service],
            spec.log_dir / f"{service}.log",
        )

    conf = nginx.write_config(
        spec.state_dir / "nginx" / "conf",
        spec.state_dir / "nginx" / "run",
        spec.log_dir / "nginx",
        nginx_values(spec, secret),
    )
    if "nginx" in records:
        nginx.reload(records["nginx"], conf)
    else:
        records["nginx"] = nginx.start(conf, spec.state_dir / "nginx" / "run")
    _write_state(spec, secret, records)
    _wait_http(f"{spec.public_url}/readyz/enrollment", None, spec.log_dir / "nginx" / "error.log")
    _wait_http(f"{spec.admin_url}/readyz/grants", None, spec.log_dir / "nginx" / "error.log")
    return read_state(spec)


def nginx_values(spec: GatewaySpec, secret: dict[str, str]) -> dict[str, str]:
    crl = spec.pki_dir / "crl.pem"
    return {
        "NGINX_WORKER_PROCESSES": os.environ.get("MOSAIC_NGINX_WORKERS", "2"),
        "PUBLIC_LISTEN": f"{spec.host}:{spec.ports.public}",
        "ADMIN_LISTEN": f"{spec.host}:{spec.ports.admin}",
        "SERVER_CERT_PATH": str(spec.pki_dir / "server.pem"),
        "SERVER_KEY_PATH": str(spec.pki_dir / "server.key"),
        "CLIENT_CA_PATH": str(spec.pki_dir / "client-ca.pem"),
        "SSL_CRL_DIRECTIVE": f"ssl_crl {crl};" if crl.exists() else "",
        "ENROLLMENT_UPSTREAM": f"{spec.host}:{spec.ports.enrollment}",
        "VERBS_UPSTREAM": f"{spec.host}:{spec.ports.verbs}",
        "GRANTS_UPSTREAM": f"{spec.host}:{spec.ports.grants}",
        "CA_BROKER_UPSTREAM": f"{spec.host}:{spec.ports.ca_broker}",
        "PROXY_SECRET": secret["proxy_secret"],
        "ENROLLMENT_RATE": os.environ.get("MOSAIC_ENROLLMENT_RATE", "5r/s"),
        "ENROLLMENT_BURST": os.environ.get("MOSAIC_ENROLLMENT_BURST", "20"),
        "VERBS_RATE": os.environ.get("MOSAIC_VERBS_RATE", "2000r/s"),
        "VERBS_BURST": os.environ.get("MOSAIC_VERBS_BURST", "4000"),
        "PUBLIC_MAX_BODY": "64k",
        "ADMIN_MAX_BODY": "1m",
    }


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def down(spec: GatewaySpec) -> list[str]:
    """Stop what `up` recorded, newest first. Returns the names of the processes stopped."""
    state = read_state(spec)
    records = records_of(state)
    stopped = []
    for name in ("nginx", "verbs", "grants", "enrollment", "ca_broker"):
        record = records.get(name)
        if record is not None and stop(record):
            stopped.append(name)
    if spec.postgres.initialised() and spec.postgres.is_running():
        spec.postgres.stop()
        stopped.append("postgres")
    if state:
        state["processes"] = {}
        state["pids"] = {}
        write_atomically(spec.state_file, json.dumps(state, indent=2), mode=0o600)
    still_open = [
        port
        for port in (
            spec.ports.public,
            spec.ports.admin,
            spec.ports.postgres,
            *(spec.ports.service(name) for name in SERVICES),
        )
        if _port_open(spec.host, port)
    ]
    if still_open:
        raise RuntimeError(f"gateway {spec.name}: ports still open after down: {still_open}")
    return stopped
