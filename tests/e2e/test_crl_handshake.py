"""Revocation reaches nginx: after /revoke the broker rewrites the CRL and reloads nginx, and the
revoked certificate is refused in a real TLS handshake on the public listener."""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from fedcore import pki
from fedcore.csr import make_csr
from tests.support.factories import create_grant_fixture
from tests.support.stack import Gateway


async def test_revoked_certificate_is_refused_by_nginx(gateway_a: Gateway) -> None:
    fx = await create_grant_fixture(gateway_a.database_url)
    key = ec.generate_private_key(ec.SECP256R1())
    broker = gateway_a.service_url("ca_broker")
    auth = {"Authorization": f"Bearer {gateway_a.service_token}"}
    async with httpx.AsyncClient(base_url=broker, timeout=10) as client:
        signed = await client.post(
            "/sign",
            json={
                "csr_pem": make_csr(key, "peer"),
                "grant_id": str(fx.grant_id),
                "subject_user_id": str(fx.user_id),
                "peer_id": str(fx.peer_id),
            },
            headers=auth,
        )
        assert signed.status_code == 201, signed.text
        body = signed.json()

        workdir = Path(tempfile.mkdtemp(prefix="mosaic-test-crl-"))
        cert_path, key_path = workdir / "c.pem", workdir / "c.key"
        cert_path.write_text(body["cert_chain_pem"])
        key_path.write_bytes(pki.private_key_pem(key))

        def call() -> httpx.Response:
            context = ssl.create_default_context(cafile=gateway_a.ca_bundle)
            context.load_cert_chain(cert_path, key_path)
            with httpx.Client(verify=context, timeout=5) as peer:
                return peer.get(f"{gateway_a.public_url}/api/federation/v1/capabilities")

        before = call()
        assert before.status_code != 401 or before.json()["error"]["code"] != "client_cert_invalid"

        revoked = await client.post(
            "/revoke", json={"serial": body["serial"], "reason": "test"}, headers=auth
        )
        assert revoked.status_code == 200

    deadline = time.monotonic() + 10
    after = call()
    # The verbs refuse the revoked serial at once (client_cert_revoked, from the database);
    # wait for nginx itself to refuse it in the handshake, from the new CRL.
    while (
        after.status_code != 401 or after.json()["error"]["code"] != "client_cert_invalid"
    ) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # nginx picks the new CRL up on SIGHUP; workers roll over
        after = call()
    assert after.status_code == 401
    assert after.json()["error"]["code"] == "client_cert_invalid"
