"""Running gateways for e2e tests, started by the real launcher (``devstack``).

Tests use their own state folder and loopback addresses (``tests.support.net``), so they never
collide with a developer's ``make up`` on 127.0.0.2 or with another test session.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack import stack
from tests.support.net import host


@dataclass(frozen=True)
class Gateway:
    spec: stack.GatewaySpec
    state: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def public_url(self) -> str:
        return str(self.state["public_url"])

    @property
    def admin_url(self) -> str:
        return str(self.state["admin_url"])

    @property
    def admin_token(self) -> str:
        return str(self.state["admin_token"])

    @property
    def ca_bundle(self) -> str:
        return str(self.state["ca_bundle"])

    def tls_context(self) -> ssl.SSLContext:
        """Trust exactly this gateway's published bundle (what a peer pins)."""
        return ssl.create_default_context(cafile=self.ca_bundle)

    @property
    def database_url(self) -> str:
        return str(self.state["database_url"])

    @property
    def service_token(self) -> str:
        """The internal service token (what enrollment presents to the ca-broker)."""
        secrets: dict[str, str] = json.loads((self.spec.state_dir / "secrets.json").read_text())
        return secrets["service_token"]

    def service_url(self, service: str) -> str:
        return str(self.state["service_urls"][service])

    def reload_state(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.spec.state_file.read_text())
        return loaded


def start_gateways(count: int, first_host: str | None = None) -> tuple[list[Gateway], Path]:
    # Room for the concurrency tests' bursts; the 429 test still exceeds it.
    os.environ.setdefault("MOSAIC_ENROLLMENT_BURST", "50")
    root = Path(tempfile.mkdtemp(prefix="mosaic-test-stack-"))
    root.chmod(0o755)  # the postgres user must traverse into its cluster folder
    gateways = []
    try:
        for spec in stack.gateway_specs(count, root, first_host or host(12)):
            gateways.append(Gateway(spec, stack.up(spec)))
    except BaseException:
        stop_gateways(root)
        raise
    return gateways, root


def stop_gateways(root: Path) -> None:
    try:
        for state_file in sorted(root.glob("*/state.json")):
            stack.down(stack.spec_from_state(state_file.parent))
    finally:
        shutil.rmtree(root, ignore_errors=True)
