"""Renewal re-checks, under the grant's lock, that the certificate presented is still recorded and
unrevoked (a revocation of that one certificate may have committed since the trust path read
it): refused with 401 client_cert_revoked, the CA never asked, the peer's record unchanged."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any, cast

import psycopg
import pytest
import sqlalchemy.exc
from pydantic import SecretStr

from fedcore import pki
from fedcore.broker_client import CaBrokerClient, CaUnavailable
from fedcore.client_cert import VerifiedClientCert
from fedcore.db import contention_error, create_engine, create_sessionmaker
from fedcore.federation_oids import FederationIdentity
from fedcore.models import GrantStatus
from fedcore.scope import GrantScope
from fedcore.settings import PostgresSettings
from tests.support.db import execute, fetch_all
from tests.support.factories import DEFAULT_SCOPE, create_grant_fixture
from tests.support.fanout import Blackhole
from tests.support.net import host
from verbs.auth import ClientCertRevoked, FederationContext
from verbs.renewal import Renewer
from verbs.schemas import RenewRequest


class BrokerThatMustNotBeCalled:
    async def sign(self, **_: Any) -> Any:
        raise AssertionError("a revoked certificate must not get a renewal signed")


@pytest.mark.parametrize("recorded", ["revoked", "unrecorded"])
async def test_renewal_refuses_a_certificate_revoked_since_authentication(
    migrated_db_url: str, recorded: str
) -> None:
    fx = await create_grant_fixture(migrated_db_url, status=GrantStatus.ACTIVE)
    serial = uuid.uuid4().hex
    now = pki.utcnow()
    if recorded == "revoked":
        execute(
            migrated_db_url,
            "INSERT INTO federation_certificates (id, serial, grant_id, peer_id, "
            "fingerprint_sha256, subject_cn, backend, not_before, not_after, revoked_at) "
            "VALUES (gen_random_uuid(), %s, %s, %s, %s, 'peer', 'local', %s, %s, now())",
            (serial, fx.grant_id, fx.peer_id, uuid.uuid4().hex * 2, now, now + timedelta(hours=1)),
        )
    context = _context(fx, serial, now)
    before = fetch_all(
        migrated_db_url, "SELECT cert_serial FROM federation_peers WHERE id = %s", (fx.peer_id,)
    )
    renewer = Renewer(cast(CaBrokerClient, BrokerThatMustNotBeCalled()), max_live_certificates=3)
    engine = create_engine(PostgresSettings(url=SecretStr(migrated_db_url)))
    try:
        async with create_sessionmaker(engine)() as session:
            with pytest.raises(ClientCertRevoked) as refused:
                await renewer.renew(session, context, RenewRequest(csr_pem="unused"))
            await session.rollback()
    finally:
        await engine.dispose()
    assert refused.value.status_code == 401
    assert refused.value.code == "client_cert_revoked"
    after = fetch_all(
        migrated_db_url, "SELECT cert_serial FROM federation_peers WHERE id = %s", (fx.peer_id,)
    )
    assert after == before


def _context(fx: Any, serial: str, now: Any) -> FederationContext:
    return FederationContext(
        cert=VerifiedClientCert(
            fingerprint_sha256="00" * 32,
            serial=serial,
            not_after=now + timedelta(hours=1),
            identity=FederationIdentity(grant_id=fx.grant_id, subject_user_id=fx.user_id),
        ),
        grant_id=fx.grant_id,
        subject_user_id=fx.user_id,
        peer_id=fx.peer_id,
        peer_name=fx.peer_name,
        scope=GrantScope.from_json(DEFAULT_SCOPE),
        expires_at=None,
        subject_team_ids=frozenset(),
    )


class BrokerReached(Exception):
    """The renewal got past every check and asked the broker to sign."""


class RecordingBroker:
    def __init__(self) -> None:
        self.calls = 0
        self.asked: dict[str, Any] = {}

    async def sign(self, **asked: Any) -> Any:
        self.calls += 1
        self.asked = asked
        raise BrokerReached


def _record_certificate(url: str, fx: Any, serial: str, now: Any) -> None:
    execute(
        url,
        "INSERT INTO federation_certificates (id, serial, grant_id, peer_id, "
        "fingerprint_sha256, subject_cn, backend, not_before, not_after) "
        "VALUES (gen_random_uuid(), %s, %s, %s, %s, 'peer', 'local', %s, %s)",
        (serial, fx.grant_id, fx.peer_id, uuid.uuid4().hex * 2, now, now + timedelta(hours=1)),
    )


async def _wait_until_blocked_on_a_lock(url: str) -> None:
    """Until some other backend of this database waits for a row lock (the renewal)."""
    async with asyncio.timeout(10):
        while True:
            [(waiting,)] = fetch_all(
                url,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
            )
            if waiting:
                return
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("revoked", [True, False], ids=["revoked", "not-revoked"])
async def test_a_renewal_waits_for_a_revocation_under_way_and_then_sees_it(
    migrated_db_url: str, revoked: bool
) -> None:
    """The race the lock closes: the trust path read the certificate as live, then the broker
    started revoking it (its row locked FOR UPDATE) before the renewal's re-check. The re-check
    (FOR SHARE) waits for that transaction and decides on its outcome."""
    fx = await create_grant_fixture(migrated_db_url, status=GrantStatus.ACTIVE)
    serial, now = uuid.uuid4().hex, pki.utcnow()
    _record_certificate(migrated_db_url, fx, serial, now)
    broker = RecordingBroker()
    renewer = Renewer(cast(CaBrokerClient, broker), max_live_certificates=3)
    engine = create_engine(PostgresSettings(url=SecretStr(migrated_db_url)))
    try:
        libpq_url = migrated_db_url.replace("postgresql+psycopg://", "postgresql://")
        async with await psycopg.AsyncConnection.connect(libpq_url) as revoker:
            await revoker.execute(
                "SELECT id FROM federation_certificates WHERE serial = %s FOR UPDATE", (serial,)
            )  # the broker's revocation, under way
            async with create_sessionmaker(engine)() as session:
                renewal = asyncio.create_task(
                    renewer.renew(session, _context(fx, serial, now), RenewRequest(csr_pem="x"))
                )
                await _wait_until_blocked_on_a_lock(migrated_db_url)
                assert not renewal.done()
                if revoked:
                    await revoker.execute(
                        "UPDATE federation_certificates SET revoked_at = now() WHERE serial = %s",
                        (serial,),
                    )
                await revoker.commit()
                if revoked:
                    with pytest.raises(ClientCertRevoked):
                        await renewal
                    assert broker.calls == 0
                else:
                    with pytest.raises(BrokerReached):
                        await renewal
                    assert broker.calls == 1
                    # What the broker is asked: the same grant, the state the renewal saw
                    # (its last look refuses any other), within the deadline under the locks.
                    assert broker.asked["grant_id"] == fx.grant_id
                    assert broker.asked["grant_status"] == "active"
                    assert broker.asked["deadline_seconds"] == renewer.sign_deadline_seconds
                await session.rollback()
    finally:
        await engine.dispose()


async def test_a_stalled_ca_fails_the_renewal_in_time_and_never_blocks_a_revocation(
    migrated_db_url: str,
) -> None:
    """A renewal holds the grant's row lock while the CA signs. Against a CA that accepts and
    never answers (a real broker client, a real socket), the renewal gives up at its deadline
    (503 ca_unavailable) — well before a revocation waiting for the same lock (the grants'
    ``SELECT … FOR UPDATE`` under a lock timeout) would give up — and records nothing."""
    fx = await create_grant_fixture(migrated_db_url, status=GrantStatus.ACTIVE)
    serial, now = uuid.uuid4().hex, pki.utcnow()
    _record_certificate(migrated_db_url, fx, serial, now)
    peer_before = fetch_all(
        migrated_db_url, "SELECT cert_serial FROM federation_peers WHERE id = %s", (fx.peer_id,)
    )
    stalled_ca = Blackhole(host(1))
    # The broker client's own timeout (10 s) is far beyond the revoke's lock timeout (2 s
    # here): only the renewal's deadline lets the revocation through.
    broker = CaBrokerClient(f"http://{stalled_ca.host}:{stalled_ca.port}", "t" * 40, timeout=10)
    renewer = Renewer(broker, max_live_certificates=3, sign_deadline_seconds=0.5)
    engine = create_engine(PostgresSettings(url=SecretStr(migrated_db_url)))
    libpq_url = migrated_db_url.replace("postgresql+psycopg://", "postgresql://")
    try:
        async with create_sessionmaker(engine)() as session:

            async def renew_as_the_route_does() -> Any:
                try:
                    return await renewer.renew(
                        session, _context(fx, serial, now), RenewRequest(csr_pem="x")
                    )
                except BaseException:
                    await session.rollback()  # fedcore.db.unit_of_work on the way out
                    raise

            renewal = asyncio.create_task(renew_as_the_route_does())
            async with await psycopg.AsyncConnection.connect(libpq_url) as revoker:
                await revoker.execute("SET lock_timeout = '2s'")
                await _wait_until_the_grant_is_locked(migrated_db_url, fx.grant_id)
                await revoker.execute(
                    "SELECT id FROM federation_grants WHERE id = %s FOR UPDATE", (fx.grant_id,)
                )  # waits for the renewal; a LockNotAvailable here is the defect
                await revoker.execute(
                    "UPDATE federation_grants SET status = 'revoked' WHERE id = %s",
                    (fx.grant_id,),
                )
                await revoker.commit()
            with pytest.raises(CaUnavailable) as failed:
                await renewal
    finally:
        await engine.dispose()
        await broker.aclose()
        stalled_ca.close()
    assert failed.value.status_code == 503
    assert failed.value.code == "ca_unavailable"
    peer_after = fetch_all(
        migrated_db_url, "SELECT cert_serial FROM federation_peers WHERE id = %s", (fx.peer_id,)
    )
    assert peer_after == peer_before
    assert fetch_all(
        migrated_db_url,
        "SELECT serial FROM federation_certificates WHERE grant_id = %s",
        (fx.grant_id,),
    ) == [(serial,)]
    assert fetch_all(
        migrated_db_url, "SELECT status FROM federation_grants WHERE id = %s", (fx.grant_id,)
    ) == [("revoked",)]


async def _wait_until_the_grant_is_locked(url: str, grant_id: uuid.UUID) -> None:
    """Until the renewal holds the grant's row lock (pgrowlocks is not installed: try it)."""
    libpq_url = url.replace("postgresql+psycopg://", "postgresql://")
    async with asyncio.timeout(10):
        async with await psycopg.AsyncConnection.connect(libpq_url, autocommit=True) as probe:
            while True:
                locked = await (
                    await probe.execute(
                        "SELECT id FROM federation_grants WHERE id = %s FOR UPDATE SKIP LOCKED",
                        (grant_id,),
                    )
                ).fetchall()
                if not locked:
                    return
                await asyncio.sleep(0.02)


async def test_a_second_renewal_of_the_grant_fails_at_once_instead_of_queueing(
    migrated_db_url: str,
) -> None:
    """Renewals never queue for the grant's lock: queued behind each other against a stalled CA,
    each would hold it for a whole deadline in turn and a revocation behind them would time
    out. The second renewal fails at once with a contention error (``503 database_busy``)."""
    fx = await create_grant_fixture(migrated_db_url, status=GrantStatus.ACTIVE)
    serial, now = uuid.uuid4().hex, pki.utcnow()
    _record_certificate(migrated_db_url, fx, serial, now)
    stalled_ca = Blackhole(host(1))
    broker = CaBrokerClient(f"http://{stalled_ca.host}:{stalled_ca.port}", "t" * 40, timeout=10)
    renewer = Renewer(broker, max_live_certificates=3, sign_deadline_seconds=2.0)
    engine = create_engine(PostgresSettings(url=SecretStr(migrated_db_url)))
    sessions = create_sessionmaker(engine)
    try:
        async with sessions() as first_session, sessions() as second_session:
            first = asyncio.create_task(
                renewer.renew(first_session, _context(fx, serial, now), RenewRequest(csr_pem="x"))
            )
            await _wait_until_the_grant_is_locked(migrated_db_url, fx.grant_id)
            started = asyncio.get_running_loop().time()
            with pytest.raises(sqlalchemy.exc.OperationalError) as second:
                await renewer.renew(
                    second_session, _context(fx, serial, now), RenewRequest(csr_pem="x")
                )
            waited = asyncio.get_running_loop().time() - started
            assert not first.done()  # the first still holds the lock: the second did not wait
            busy = contention_error(second.value)
            assert busy is not None
            assert (busy.status_code, busy.code) == (503, "database_busy")
            await second_session.rollback()
            with pytest.raises(CaUnavailable):
                await first
            await first_session.rollback()
    finally:
        await engine.dispose()
        await broker.aclose()
        stalled_ca.close()
    assert waited < 1.0  # far below the first renewal's 2 s deadline: no queueing
    assert fetch_all(
        migrated_db_url,
        "SELECT serial FROM federation_certificates WHERE grant_id = %s",
        (fx.grant_id,),
    ) == [(serial,)]


async def test_a_renewal_meeting_a_lock_on_its_peer_fails_at_once(migrated_db_url: str) -> None:
    """The peer's row is locked first (the order enrollment and a peer's revocation use) and
    without queueing: an enrollment of another grant or a peer revocation under way makes the
    renewal fail at once (``503 database_busy``), the CA never asked, nothing changed."""
    fx = await create_grant_fixture(migrated_db_url, status=GrantStatus.ACTIVE)
    serial, now = uuid.uuid4().hex, pki.utcnow()
    _record_certificate(migrated_db_url, fx, serial, now)
    peer_before = fetch_all(
        migrated_db_url, "SELECT cert_serial FROM federation_peers WHERE id = %s", (fx.peer_id,)
    )
    broker = RecordingBroker()
    renewer = Renewer(cast(CaBrokerClient, broker), max_live_certificates=3)
    engine = create_engine(PostgresSettings(url=SecretStr(migrated_db_url)))
    libpq_url = migrated_db_url.replace("postgresql+psycopg://", "postgresql://")
    try:
        async with await psycopg.AsyncConnection.connect(libpq_url) as holder:
            await holder.execute(
                "SELECT id FROM federation_peers WHERE id = %s FOR NO KEY UPDATE", (fx.peer_id,)
            )
            async with create_sessionmaker(engine)() as session:
                with pytest.raises(sqlalchemy.exc.OperationalError) as refused:
                    await asyncio.wait_for(
                        renewer.renew(
                            session, _context(fx, serial, now), RenewRequest(csr_pem="x")
                        ),
                        1.0,
                    )
                await session.rollback()
            await holder.rollback()
    finally:
        await engine.dispose()
    busy = contention_error(refused.value)
    assert busy is not None
    assert (busy.status_code, busy.code) == (503, "database_busy")
    assert broker.calls == 0
    assert (
        fetch_all(
            migrated_db_url, "SELECT cert_serial FROM federation_peers WHERE id = %s", (fx.peer_id,)
        )
        == peer_before
    )
    assert fetch_all(
        migrated_db_url,
        "SELECT serial FROM federation_certificates WHERE grant_id = %s",
        (fx.grant_id,),
    ) == [(serial,)]
