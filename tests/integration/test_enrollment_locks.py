"""An enrollment holds the peer's and the grant's row locks while the CA signs; an admin's revoke
waits for them. Against the real ca-broker (in-process, on the same database) made slow — its
local CA signs only when the test lets it — the enrollment gives up at its deadline
(503 ca_unavailable) long before a revoke waiting for the grant would time out, and a second
redemption never queues behind the first (NOWAIT: 503 database_busy at once)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography import x509
from fastapi import FastAPI
from pydantic import SecretStr

import ca_broker.app
import ca_broker.settings
from enrollment.schemas import EnrollmentRequest
from enrollment.service import EnrollmentService
from fedcore import pki
from fedcore.broker_client import CaBrokerClient, SignedCertificate
from fedcore.csr import make_csr
from fedcore.db import create_engine, create_sessionmaker
from fedcore.errors import DomainError
from fedcore.settings import PostgresSettings
from tests.support.apps import running
from tests.support.db import execute, fetch_all
from tests.support.factories import create_enrollment_token, create_grant_fixture
from tests.support.secrets import random_secret
from tests.support.slow_ca import GatedBackend


@pytest.fixture
async def slow_ca(migrated_db_url: str, tmp_path: Path) -> AsyncIterator[tuple[FastAPI, str]]:
    token = random_secret()
    app = ca_broker.app.create_app(
        ca_broker.settings.Settings(
            db={"url": migrated_db_url, "startup_wait_seconds": 0},
            secrets={"service_token": token},
            pki_dir=str(tmp_path / "pki"),
            ca_key_secret=random_secret(),
        )
    )
    async with running(app, "http://ca-broker"):
        service = app.state.ca_service
        service.backend = GatedBackend(service.backend.hierarchy)
        yield app, token
        service.backend.gate.set()


class AskedBroker(CaBrokerClient):
    """The real client, remembering what it asked the broker to sign."""

    asked: dict[str, Any]

    async def sign(self, **asked: Any) -> SignedCertificate:
        if asked.get("deadline_seconds") is not None:
            self.asked = asked
        return await super().sign(**asked)


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


async def test_a_stalled_ca_fails_the_enrollment_in_time_and_a_revoke_goes_through(
    migrated_db_url: str, slow_ca: tuple[FastAPI, str]
) -> None:
    app, service_token = slow_ca
    fx = await create_grant_fixture(migrated_db_url)
    token = await create_enrollment_token(migrated_db_url, fx)
    broker = CaBrokerClient(
        "http://ca-broker", service_token, timeout=10, transport=httpx.ASGITransport(app=app)
    )
    engine = create_engine(PostgresSettings(url=SecretStr(migrated_db_url)))
    sessions = create_sessionmaker(engine)
    enrollment = EnrollmentService(broker, sessions, "https://a.test:8443", ca_deadline_seconds=1.5)
    csr = make_csr(pki.new_ec_key(), "peer")
    try:
        async with sessions() as first, sessions() as second:
            redeeming = asyncio.create_task(
                enrollment.redeem(first, token, EnrollmentRequest(csr_pem=csr))
            )
            await asyncio.wait_for(app.state.ca_service.backend.entered.wait(), 10)
            # A second redemption while the first holds the locks: refused at once.
            started = asyncio.get_running_loop().time()
            with pytest.raises(DomainError) as busy:
                await enrollment.redeem(second, token, EnrollmentRequest(csr_pem=csr))
            assert asyncio.get_running_loop().time() - started < 1.0
            assert (busy.value.status_code, busy.value.code) == (503, "database_busy")
            # The admin's revoke (grants: the grant's row, lock_timeout 5 s; 3 s here).
            async with await psycopg.AsyncConnection.connect(_libpq(migrated_db_url)) as revoker:
                await revoker.execute("SET lock_timeout = '3s'")
                await revoker.execute(
                    "SELECT id FROM federation_grants WHERE id = %s FOR NO KEY UPDATE",
                    (fx.grant_id,),
                )  # a LockNotAvailable here is the defect
                await revoker.execute(
                    "UPDATE federation_grants SET status = 'revoked' WHERE id = %s",
                    (fx.grant_id,),
                )
                await revoker.commit()
            with pytest.raises(DomainError) as failed:
                await redeeming
    finally:
        await broker.aclose()
        await engine.dispose()
    assert (failed.value.status_code, failed.value.code) == (503, "ca_unavailable")
    assert fetch_all(
        migrated_db_url,
        "SELECT used_at FROM federation_enrollment_tokens WHERE grant_id = %s",
        (fx.grant_id,),
    ) == [(None,)]
    assert fetch_all(
        migrated_db_url, "SELECT status FROM federation_grants WHERE id = %s", (fx.grant_id,)
    ) == [("revoked",)]
    # The two refusals were audited (each attempt leaves a row).
    rows = fetch_all(
        migrated_db_url,
        "SELECT outcome, reason_code FROM federation_audit_log "
        "WHERE action = 'enrollment.redeem' AND grant_id = %s ORDER BY id",
        (fx.grant_id,),
    )
    assert sorted(rows) == [("error", "ca_unavailable"), ("error", "database_busy")]


async def test_a_successful_enrollment_revokes_certificates_earlier_attempts_left_behind(
    migrated_db_url: str, slow_ca: tuple[FastAPI, str]
) -> None:
    """An attempt that gave up on a slow CA may still have had its certificate recorded by the
    broker (never delivered). Once an enrollment of the grant succeeds, those are revoked: they
    would otherwise count against the renewal bound (and were never anyone's)."""
    app, service_token = slow_ca
    app.state.ca_service.backend.gate.set()  # a CA answering in time
    fx = await create_grant_fixture(migrated_db_url)
    token = await create_enrollment_token(migrated_db_url, fx)
    orphan = format(x509.random_serial_number(), "x")
    now = pki.utcnow()
    execute(
        migrated_db_url,
        "INSERT INTO federation_certificates (id, serial, grant_id, peer_id, fingerprint_sha256, "
        "subject_cn, backend, not_before, not_after) "
        "VALUES (gen_random_uuid(), %s, %s, %s, %s, 'peer', 'local', %s, %s)",
        (orphan, fx.grant_id, fx.peer_id, "d" * 64, now, now + timedelta(hours=1)),
    )
    broker = AskedBroker(
        "http://ca-broker", service_token, timeout=10, transport=httpx.ASGITransport(app=app)
    )
    engine = create_engine(PostgresSettings(url=SecretStr(migrated_db_url)))
    sessions = create_sessionmaker(engine)
    enrollment = EnrollmentService(broker, sessions, "https://a.test:8443")
    try:
        async with sessions() as session:
            answer = await enrollment.redeem(
                session, token, EnrollmentRequest(csr_pem=make_csr(pki.new_ec_key(), "peer"))
            )
    finally:
        await broker.aclose()
        await engine.dispose()
    delivered = pki.serial_hex(pki.load_pem_chain(answer.cert_pem)[0])
    rows = dict(
        fetch_all(
            migrated_db_url,
            "SELECT serial, revoked_reason FROM federation_certificates WHERE grant_id = %s",
            (fx.grant_id,),
        )
    )
    assert rows == {delivered: None, orphan: "enrollment_undelivered"}
    # The state the enrollment saw (the broker's last look refuses any other), in its deadline.
    assert broker.asked["grant_status"] == "pending"
    assert broker.asked["deadline_seconds"] == enrollment.ca_deadline_seconds
