"""Revoking a grant (or a peer) revokes its live certificates: the grants service asks the real
ca-broker (driven in-process on the same database) to revoke each serial, so it lands on the CRL.
When the broker cannot be reached the revocation is recorded in federation_certificates directly
(the verbs refuse the serial at once; the broker's refresher publishes it)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography import x509
from fastapi import FastAPI

import ca_broker.app
import ca_broker.settings
from fedcore import pki
from fedcore.csr import make_csr
from fedcore.issuance_lock import NAMESPACE
from grants.app import create_app
from tests.integration.grants.harness import Db, make_settings, sync_url
from tests.support.apps import running
from tests.support.secrets import random_secret
from tests.support.slow_ca import GatedBackend


@dataclass
class TwoApps:
    grants: httpx.AsyncClient
    broker: httpx.AsyncClient
    db: Db
    admin: dict[str, str]
    service: dict[str, str]
    broker_app: FastAPI

    async def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = await self.grants.request(method, path, headers=self.admin, **kwargs)
        assert response.status_code == status, response.text
        return response.json()

    async def live_grant(self) -> tuple[dict[str, Any], str]:
        """A grant activated the way enrollment does it, with a certificate from the broker."""
        user = await self.ok(
            "POST", "/api/admin/users", 201, json={"username": f"u{uuid.uuid4().hex[:6]}"}
        )
        peer = await self.ok(
            "POST", "/api/admin/federation/peers", 201, json={"name": f"p{uuid.uuid4().hex[:6]}"}
        )
        grant = await self.ok(
            "POST",
            "/api/admin/federation/grants",
            201,
            json={
                "subject_user_id": user["id"],
                "peer_id": peer["id"],
                "scope": {"resources": ["tasks"]},
            },
        )
        signed = await self.sign(grant)
        assert signed.status_code == 201, signed.text
        self.db.execute(
            "UPDATE federation_grants SET status = 'active' WHERE id = %s", (grant["id"],)
        )
        return grant, str(signed.json()["serial"])

    async def sign(self, grant: dict[str, Any]) -> httpx.Response:
        """The broker's /sign for this grant, as enrollment or renewal asks it."""
        return await self.broker.post(
            "/sign",
            headers=self.service,
            json={
                "csr_pem": make_csr(pki.new_ec_key(), "peer"),
                "grant_id": grant["id"],
                "subject_user_id": grant["subject_user_id"],
                "peer_id": grant["peer_id"],
            },
        )

    async def sign_held_at_the_ca(
        self, grant: dict[str, Any]
    ) -> tuple[GatedBackend, asyncio.Task[httpx.Response]]:
        """A /sign for this grant, started and held inside the CA until ``gate`` is set."""
        service = self.broker_app.state.ca_service
        gated = GatedBackend(service.backend.hierarchy)
        service.backend = gated
        signing = asyncio.create_task(self.sign(grant))
        await asyncio.wait_for(gated.entered.wait(), 10)
        return gated, signing

    def serials_of(self, grant: dict[str, Any]) -> set[str]:
        rows = self.db.rows(
            "SELECT serial FROM federation_certificates WHERE grant_id = %s", (grant["id"],)
        )
        return {serial for (serial,) in rows}

    async def crl_serials(self) -> set[str]:
        crl = x509.load_pem_x509_crl((await self.broker.get("/pki/crl.pem")).content)
        return {format(entry.serial_number, "x") for entry in crl}


@pytest.fixture
async def two_apps(migrated_db_url: str, tmp_path: Path) -> AsyncIterator[TwoApps]:
    shared = {
        "gateway_secret": random_secret(),
        "proxy_secret": random_secret(),
        "service_token": random_secret(),
    }
    db_settings = {"url": migrated_db_url, "startup_wait_seconds": 0}
    broker = ca_broker.app.create_app(
        ca_broker.settings.Settings(
            db=db_settings,
            secrets=shared,
            pki_dir=str(tmp_path / "pki"),
            ca_key_secret=random_secret(),
        )
    )
    db = Db(migrated_db_url)
    token, _ = db.insert_token("admin")
    async with running(broker, "http://ca-broker") as broker_client:
        grants_app = create_app(
            make_settings(migrated_db_url, None, secrets=shared, ca_broker_url="http://ca-broker"),
            broker_transport=httpx.ASGITransport(app=broker),
        )
        async with running(grants_app) as grants_client:
            yield TwoApps(
                grants=grants_client,
                broker=broker_client,
                db=db,
                admin={"Authorization": f"Bearer {token}"},
                service={"Authorization": f"Bearer {shared['service_token']}"},
                broker_app=broker,
            )


async def test_revoking_a_grant_puts_its_certificate_on_the_crl(two_apps: TwoApps) -> None:
    grant, serial = await two_apps.live_grant()
    _, bystander = await two_apps.live_grant()
    assert serial not in await two_apps.crl_serials()
    revoked = await two_apps.ok(
        "PATCH", f"/api/admin/federation/grants/{grant['id']}/revoke", json={"reason": "x"}
    )
    assert revoked["certificate_revocations"] == [{"serial": serial, "status": "revoked"}]
    assert two_apps.db.one(
        "SELECT revoked_reason FROM federation_certificates WHERE serial = %s", (serial,)
    ) == ("grant_revoked",)
    on_crl = await two_apps.crl_serials()
    assert serial in on_crl
    assert bystander not in on_crl


async def test_revoking_a_peer_revokes_the_certificates_of_its_grants(two_apps: TwoApps) -> None:
    grant, serial = await two_apps.live_grant()
    changed = await two_apps.ok(
        "PATCH", f"/api/admin/federation/peers/{grant['peer_id']}/state", json={"state": "revoked"}
    )
    assert changed["revoked_grant_ids"] == [grant["id"]]
    assert changed["certificate_revocations"] == [{"serial": serial, "status": "revoked"}]
    assert serial in await two_apps.crl_serials()


async def test_without_the_broker_the_revocation_is_recorded_in_the_database(
    migrated_db_url: str,
) -> None:
    db = Db(migrated_db_url)
    token, _ = db.insert_token("admin")
    headers = {"Authorization": f"Bearer {token}"}
    async with running(create_app(make_settings(migrated_db_url, None))) as client:
        user = (
            await client.post("/api/admin/users", json={"username": "u"}, headers=headers)
        ).json()
        peer = (
            await client.post("/api/admin/federation/peers", json={"name": "p"}, headers=headers)
        ).json()
        grant = (
            await client.post(
                "/api/admin/federation/grants",
                json={
                    "subject_user_id": user["id"],
                    "peer_id": peer["id"],
                    "scope": {"resources": ["tasks"]},
                },
                headers=headers,
            )
        ).json()
        db.execute(
            "INSERT INTO federation_certificates (id, serial, grant_id, peer_id, "
            "fingerprint_sha256, subject_cn, backend, not_before, not_after) VALUES "
            "(%s, 'abc123', %s, %s, %s, 'p', 'local', now(), now() + interval '1 day')",
            (uuid.uuid4(), grant["id"], peer["id"], "f" * 64),
        )
        response = await client.patch(
            f"/api/admin/federation/grants/{grant['id']}/revoke", json={}, headers=headers
        )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "revoked"
    assert response.json()["certificate_revocations"] == [
        {"serial": "abc123", "status": "recorded"}
    ]
    revoked_at, reason = db.one("SELECT revoked_at, revoked_reason FROM federation_certificates")
    assert revoked_at is not None
    assert reason == "grant_revoked"


async def test_a_signature_finishing_after_the_revocation_is_refused_not_left_off_the_crl(
    two_apps: TwoApps,
) -> None:
    """The broker signs slowly; meanwhile the grant is revoked (and its live certificates
    listed and put on the CRL). The late signature's last look sees the revocation: 409
    grant_not_issuable, nothing recorded — no live certificate of a revoked grant off the CRL."""
    grant, serial = await two_apps.live_grant()
    gated, signing = await two_apps.sign_held_at_the_ca(grant)
    revoked = await two_apps.ok(
        "PATCH", f"/api/admin/federation/grants/{grant['id']}/revoke", json={"reason": "x"}
    )
    assert revoked["certificate_revocations"] == [{"serial": serial, "status": "revoked"}]
    gated.gate.set()
    late = await signing
    assert late.status_code == 409, late.text
    assert late.json()["error"]["code"] == "grant_not_issuable"
    assert two_apps.serials_of(grant) == {serial}
    assert serial in await two_apps.crl_serials()


@pytest.mark.parametrize("revoked", ["grant", "peer"])
async def test_a_revocation_lists_the_certificates_only_after_signatures_past_their_last_look(
    two_apps: TwoApps, revoked: str
) -> None:
    """A signature past the broker's last look (it holds the issuance lock, its certificate row
    not yet committed) when the revocation commits: the revocation — of the grant or of the
    whole peer — waits for it and revokes that certificate too (emulated here: the lock and the
    row from a connection of the test)."""
    grant, serial = await two_apps.live_grant()
    late_serial = format(x509.random_serial_number(), "x")  # as the CRL spells it
    async with await psycopg.AsyncConnection.connect(sync_url(two_apps.db.url)) as broker_tx:
        await broker_tx.execute(
            "SELECT pg_advisory_xact_lock_shared(%s, hashtext(%s))",
            (NAMESPACE, grant["peer_id"]),
        )
        await broker_tx.execute(
            "INSERT INTO federation_certificates (id, serial, grant_id, peer_id, "
            "fingerprint_sha256, subject_cn, backend, not_before, not_after) VALUES "
            "(gen_random_uuid(), %s, %s, %s, %s, 'p', 'local', now(), now() + interval '1 day')",
            (late_serial, grant["id"], grant["peer_id"], "e" * 64),
        )
        if revoked == "grant":
            call = two_apps.ok(
                "PATCH", f"/api/admin/federation/grants/{grant['id']}/revoke", json={"reason": "x"}
            )
        else:
            call = two_apps.ok(
                "PATCH",
                f"/api/admin/federation/peers/{grant['peer_id']}/state",
                json={"state": "revoked"},
            )
        revoking = asyncio.create_task(call)
        for _ in range(100):  # until the revocation has committed the grant
            if two_apps.db.one(
                "SELECT status FROM federation_grants WHERE id = %s", (grant["id"],)
            ) == ("revoked",):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert not revoking.done()  # waiting for the signature under way
        await broker_tx.commit()
    answer = await revoking
    assert sorted(r["serial"] for r in answer["certificate_revocations"]) == sorted(
        [serial, late_serial]
    )
    assert {late_serial, serial} <= await two_apps.crl_serials()


async def test_a_late_signature_never_outlives_an_expiry_brought_forward_meanwhile(
    two_apps: TwoApps,
) -> None:
    """The lifetime is capped at the grant's expiry before signing; the last look checks the
    signed certificate against the expiry as it is now (409, nothing recorded)."""
    grant, serial = await two_apps.live_grant()
    gated, signing = await two_apps.sign_held_at_the_ca(grant)
    two_apps.db.execute(
        "UPDATE federation_grants SET expires_at = now() + interval '1 hour' WHERE id = %s",
        (grant["id"],),
    )  # the default lifetime is a day
    gated.gate.set()
    late = await signing
    assert late.status_code == 409, late.text
    assert late.json()["error"]["code"] == "grant_not_issuable"
    assert two_apps.serials_of(grant) == {serial}
