"""The verbs service's SQLAlchemy reads and writes off the inbound hot path: the outbound
connections (local query API, fan-out) and certificate renewal. The inbound verbs' statements
are raw SQL in :mod:`verbs.reads`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fedcore.models import (
    FederationCertificate,
    FederationCircuit,
    FederationConnection,
    FederationGrant,
    FederationPeer,
    User,
)

CERTS = FederationCertificate.__table__
GRANTS = FederationGrant.__table__
PEERS = FederationPeer.__table__
USERS = User.__table__


# ------------------------------------------------------------------------------ outbound side

CONNECTIONS = FederationConnection.__table__
CIRCUITS = FederationCircuit.__table__
# A connection row as the fan-out reads it: with its circuit and the database's clock (the
# circuit's times are the database's; verbs.circuit).
_CONNECTION_WITH_CIRCUIT = select(
    CONNECTIONS,
    CIRCUITS.c.consecutive_failures.label("circuit_failures"),
    CIRCUITS.c.last_failure_code.label("circuit_last_failure_code"),
    CIRCUITS.c.opened_at.label("circuit_opened_at"),
    CIRCUITS.c.probe_started_at.label("circuit_probe_started_at"),
    func.now().label("db_now"),
).select_from(CONNECTIONS.outerjoin(CIRCUITS, CIRCUITS.c.connection_id == CONNECTIONS.c.id))


async def user_exists(session: AsyncSession, user_id: uuid.UUID) -> bool:
    return (
        await session.execute(select(USERS.c.id).where(USERS.c.id == user_id))
    ).first() is not None


async def connection_by_name(session: AsyncSession, name: str) -> Any | None:
    result = await session.execute(_CONNECTION_WITH_CIRCUIT.where(CONNECTIONS.c.name == name))
    return result.first()


# ------------------------------------------------------------------------------ renewal


async def lock_for_renewal(session: AsyncSession, peer_id: uuid.UUID, grant_id: uuid.UUID) -> None:
    """Serialise renewals of one grant (count, then sign, then move the peer's record) until this
    transaction ends: the peer's row, then the grant's — the order enrollment and a peer's
    revocation take them in, so a renewal cannot deadlock with either.

    ``FOR NO KEY UPDATE``: the broker's certificate insert takes ``FOR KEY SHARE`` on both rows
    (foreign keys) in its own transaction while this one waits for it; ``FOR UPDATE`` would
    deadlock the two until the statement timeout. The peer's row is written at the end (its
    current certificate), so it is locked up front, not waited for after the CA signed.

    ``NOWAIT``: a renewal never queues for either lock. Queued renewals would each hold them for
    up to the CA deadline in turn, and a revocation behind them would wait for all of them and
    time out; so a renewal meeting another renewal, an enrollment or a revocation under way fails
    at once (``503 database_busy``, Retry-After) and a revocation waits for one renewal at most."""
    await session.execute(
        select(PEERS.c.id).where(PEERS.c.id == peer_id).with_for_update(key_share=True, nowait=True)
    )
    await session.execute(
        select(GRANTS.c.id)
        .where(GRANTS.c.id == grant_id)
        .with_for_update(key_share=True, nowait=True)
    )


async def certificate_revoked(session: AsyncSession, serial: str) -> bool:
    """Is the recorded certificate with this serial revoked (or no longer recorded)?

    ``FOR SHARE`` until this transaction ends: a revocation of this certificate (the broker
    locks its row ``FOR UPDATE``) waits for the renewal to finish, and a renewal waits for a
    revocation already under way and then sees it — the check cannot go stale before the new
    certificate is signed."""
    result = await session.execute(
        select(CERTS.c.revoked_at).where(CERTS.c.serial == serial).with_for_update(read=True)
    )
    row = result.first()
    return row is None or row.revoked_at is not None


async def live_certificate_count(
    session: AsyncSession, grant_id: uuid.UUID, peer_id: uuid.UUID, now: datetime
) -> int:
    result = await session.execute(
        select(func.count())
        .select_from(CERTS)
        .where(
            CERTS.c.grant_id == grant_id,
            CERTS.c.peer_id == peer_id,
            CERTS.c.revoked_at.is_(None),
            CERTS.c.not_after > now,
        )
    )
    return int(result.scalar_one())


async def record_peer_certificate(
    session: AsyncSession,
    peer_id: uuid.UUID,
    serial: str,
    fingerprint: str,
    not_after: datetime,
    now: datetime,
) -> None:
    """The peer's current certificate (what enrollment records, moved on by a renewal)."""
    await session.execute(
        update(FederationPeer)
        .where(FederationPeer.id == peer_id)
        .values(
            cert_serial=serial,
            cert_fingerprint_sha256=fingerprint,
            cert_not_after=not_after,
            updated_at=now,
        )
    )
