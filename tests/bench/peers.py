"""Peers the real way: the admin API (admin listener, admin token from the state file) creates
peer, grant and enrollment token; the peer redeems the token through nginx's public listener."""

from __future__ import annotations

import secrets
import ssl
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from fedcore import pki
from fedcore.csr import make_csr
from tests.support.stack import Gateway


@dataclass(frozen=True)
class PendingEnrollment:
    name: str
    peer_id: uuid.UUID
    grant_id: uuid.UUID
    token: str
    key: ec.EllipticCurvePrivateKey
    csr_pem: str


@dataclass(frozen=True)
class BenchPeer:
    name: str
    peer_id: uuid.UUID
    grant_id: uuid.UUID
    cert_path: Path
    key_path: Path

    def ssl_context(self, gw: Gateway) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=gw.ca_bundle)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


def admin_client(gw: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gw.admin_url,
        headers={"Authorization": f"Bearer {gw.admin_token}"},
        timeout=30,
    )


def public_client(gw: Gateway, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gw.public_url, verify=gw.tls_context(), timeout=30, **kwargs)


async def _post(admin: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await admin.post(path, json=body)
    if response.status_code != 201:
        raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:300]}")
    answer: dict[str, Any] = response.json()
    return answer


async def create_peer_and_grant(
    admin: httpx.AsyncClient, user_id: uuid.UUID, scope: dict[str, Any], name: str | None = None
) -> tuple[str, uuid.UUID, uuid.UUID]:
    name = name or f"bench-{secrets.token_hex(5)}"
    peer = await _post(admin, "/api/admin/federation/peers", {"name": name})
    grant = await _post(
        admin,
        "/api/admin/federation/grants",
        {"subject_user_id": str(user_id), "peer_id": peer["id"], "scope": scope},
    )
    return name, uuid.UUID(peer["id"]), uuid.UUID(grant["id"])


async def prepare_enrollment(
    admin: httpx.AsyncClient, user_id: uuid.UUID, scope: dict[str, Any]
) -> PendingEnrollment:
    """Peer + grant + token (admin API) and a fresh key + CSR: everything but the redemption."""
    name, peer_id, grant_id = await create_peer_and_grant(admin, user_id, scope)
    token = await _post(admin, f"/api/admin/federation/grants/{grant_id}/tokens", {})
    key = ec.generate_private_key(ec.SECP256R1())
    return PendingEnrollment(name, peer_id, grant_id, token["token"], key, make_csr(key, name))


async def redeem(public: httpx.AsyncClient, pending: PendingEnrollment) -> dict[str, Any]:
    response = await public.post(
        f"/api/federation/v1/enrollment/{pending.token}", json={"csr_pem": pending.csr_pem}
    )
    if response.status_code != 201:
        raise RuntimeError(f"enrollment refused: {response.status_code} {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


def write_identity(pending: PendingEnrollment, body: dict[str, Any], folder: Path) -> BenchPeer:
    folder.mkdir(parents=True, exist_ok=True)
    cert_path = folder / f"{pending.name}.pem"
    key_path = folder / f"{pending.name}.key"
    cert_path.write_text(body["cert_chain_pem"])
    key_path.write_bytes(pki.private_key_pem(pending.key))
    key_path.chmod(0o600)
    return BenchPeer(pending.name, pending.peer_id, pending.grant_id, cert_path, key_path)


async def enrolled_peer(
    gw: Gateway,
    admin: httpx.AsyncClient,
    user_id: uuid.UUID,
    scope: dict[str, Any],
    folder: Path | None = None,
) -> BenchPeer:
    pending = await prepare_enrollment(admin, user_id, scope)
    async with public_client(gw) as public:
        body = await redeem(public, pending)
    return write_identity(pending, body, folder or Path(tempfile.mkdtemp(prefix="mosaic-bench-")))
