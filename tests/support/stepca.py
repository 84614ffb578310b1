"""A real step-ca (0.19, built from Debian's Go sources by ``deploy/step-ca/build.sh``) for tests.

``build_binaries()`` builds (or finds cached) ``mosaic-step-ca`` and ``mosaic-step-ca-init``;
``init_ca()`` creates a CA with two JWK provisioners (the federation template and the variant
that drops OID .2), renewal disabled; ``start()``/``stop()`` run the server as a child process
on a loopback address. ``decode_ott()`` verifies and decodes a one-time token (test-only).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tests.support.net import host

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "deploy" / "step-ca" / "build.sh"
TEMPLATES = REPO_ROOT / "deploy" / "step-ca" / "templates"
STEPCA_HOST = host(5)
MAIN_PROVISIONER = "mosaic-federation"
MISSING_OID_PROVISIONER = "mosaic-federation-missing-oid"
START_TIMEOUT_SECONDS = 20.0


class StepCaUnavailable(RuntimeError):
    """Go or the step-ca library sources are not installed: the binaries cannot be built."""


@dataclass(frozen=True)
class StepCaBinaries:
    server: Path
    init: Path


@dataclass(frozen=True)
class Provisioner:
    name: str
    kid: str
    key_json: str  # the private JWK, as provisioner_key*.json holds it
    encrypted_key: str  # the JWE compact from ca.json (encryptedKey)


@dataclass
class StepCa:
    directory: Path
    host: str
    port: int
    ca_url: str
    config_path: Path
    root_path: Path
    password: str
    password_file: Path
    provisioners: dict[str, Provisioner]
    ca_json: dict[str, Any]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.root_path))


def build_binaries() -> StepCaBinaries:
    """Run ``deploy/step-ca/build.sh`` (it caches: instant when up to date)."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False, timeout=900
    )
    if result.returncode != 0:
        if "missing Go" in result.stderr:
            raise StepCaUnavailable(result.stderr.strip()[-500:])
        raise RuntimeError(f"step-ca build failed:\n{result.stderr[-2000:]}")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if len(lines) != 2:
        raise RuntimeError(f"unexpected build.sh output: {result.stdout!r}")
    return StepCaBinaries(server=Path(lines[0]), init=Path(lines[1]))


def free_port(host: str = STEPCA_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def init_ca(
    binaries: StepCaBinaries,
    directory: Path,
    host: str = STEPCA_HOST,
    disable_renewal: bool = True,
) -> StepCa:
    """A fresh CA in ``directory``: main + missing-oid provisioners, ``--disable-renewal``."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port(host)
    password = secrets.token_urlsafe(24)
    password_file = directory / "password.txt"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    ca_dir = directory / "ca"
    subprocess.run(
        [
            str(binaries.init),
            "--dir",
            str(ca_dir),
            "--name",
            "Mosaic Test CA",
            "--address",
            f"{host}:{port}",
            "--provisioner",
            MAIN_PROVISIONER,
            "--password-file",
            str(password_file),
            "--template",
            str(TEMPLATES / "federation-leaf.tpl"),
            "--extra-provisioner",
            f"{MISSING_OID_PROVISIONER}={TEMPLATES / 'federation-leaf-missing-oid.tpl'}",
            # Renewal would copy the OIDs into a new certificate the broker never recorded.
            *(["--disable-renewal"] if disable_renewal else []),
            "--db",
            "badgerv2",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    summary = json.loads((ca_dir / "config" / "mosaic.json").read_text())
    ca_json = json.loads(Path(summary["ca_config"]).read_text())
    encrypted = {p["name"]: p["encryptedKey"] for p in ca_json["authority"]["provisioners"]}
    provisioners = {
        p["name"]: Provisioner(
            name=p["name"],
            kid=p["kid"],
            key_json=Path(p["key_file"]).read_text(),
            encrypted_key=encrypted[p["name"]],
        )
        for p in summary["provisioners"]
    }
    return StepCa(
        directory=ca_dir,
        host=host,
        port=port,
        ca_url=summary["ca_url"],
        config_path=Path(summary["ca_config"]),
        root_path=Path(summary["root"]),
        password=password,
        password_file=password_file,
        provisioners=provisioners,
        ca_json=ca_json,
    )


def is_healthy(ca: StepCa) -> bool:
    try:
        response = httpx.get(f"{ca.ca_url}/health", verify=ca.ssl_context(), timeout=1.0)
    except httpx.TransportError:
        return False
    return response.status_code == 200


def start(ca: StepCa, binaries: StepCaBinaries) -> None:
    """Start the server (its own process group) and wait for ``/health``."""
    if ca.process is not None and ca.process.poll() is None:
        return
    env = {**os.environ, "STEPPATH": str(ca.directory)}
    with ca.log_path.open("ab") as log:
        ca.process = subprocess.Popen(
            [str(binaries.server), str(ca.config_path), "--password-file", str(ca.password_file)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not is_healthy(ca):
        if ca.process.poll() is not None or time.monotonic() > deadline:
            stop(ca)
            tail = ca.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"step-ca did not start:\n{tail}")
        time.sleep(0.05)


def stop(ca: StepCa) -> None:
    """SIGTERM the server's process group (we started it), then wait; SIGKILL if it hangs."""
    process = ca.process
    if process is None:
        return
    ca.process = None
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# ---------------------------------------------------------------------------------------------
# Test-only token decoding
# ---------------------------------------------------------------------------------------------


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_ott(
    token: str, public_key: ec.EllipticCurvePublicKey
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a JWS compact ES256 token (raw r||s signature) and return (header, claims)."""
    header_b64, claims_b64, signature_b64 = token.split(".")
    signature = _b64url_decode(signature_b64)
    if len(signature) != 64:
        raise InvalidSignature("ES256 signature must be 64 bytes (r || s)")
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    public_key.verify(der, f"{header_b64}.{claims_b64}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    header: dict[str, Any] = json.loads(_b64url_decode(header_b64))
    claims: dict[str, Any] = json.loads(_b64url_decode(claims_b64))
    return header, claims
