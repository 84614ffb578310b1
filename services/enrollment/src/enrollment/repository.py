"""Row-locking reads and the guarded writes of a redemption."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fedcore.models import (
    FederationEnrollmentToken,
    FederationGrant,
    FederationPeer,
    GrantStatus,
    PeerState,
)


class EnrollmentTokenRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def find_by_hash(self, token_hash: str) -> FederationEnrollmentToken | None:
        """Unlocked lookup: which grant and peer to lock, in the gateway's one lock order."""
        result = await self.session.execute(
            select(FederationEnrollmentToken).where(
                FederationEnrollmentToken.token_hash == token_hash
            )
        )
        return result.scalar_one_or_none()

    async def lock_token(self, token_id: uuid.UUID) -> FederationEnrollmentToken:
        """SELECT … FOR UPDATE, *after* peer and grant (a concurrent redemption of the same token
        already failed on the peer's lock, NOWAIT; one that comes after sees ``used_at`` set)."""
        result = await self.session.execute(
            select(FederationEnrollmentToken)
            .where(FederationEnrollmentToken.id == token_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return result.scalar_one()

    async def lock_peer(self, peer_id: uuid.UUID) -> FederationPeer | None:
        # Lock order everywhere: peer, then grant, then token (grants' revoke paths use it too).
        # FOR NO KEY UPDATE leaves the broker's foreign-key checks (FOR KEY SHARE) unblocked.
        # NOWAIT: redemptions never queue here (each holds the locks while the CA signs, and a
        # revocation queued behind several could time out); a concurrent one is 503, retryable.
        result = await self.session.execute(
            select(FederationPeer)
            .where(FederationPeer.id == peer_id)
            .with_for_update(key_share=True, nowait=True)
        )
        return result.scalar_one_or_none()

    async def lock_grant(self, grant_id: uuid.UUID) -> FederationGrant | None:
        # FOR NO KEY UPDATE, not FOR UPDATE: the broker inserts a certificate row referencing
        # this grant while we hold the lock, and its foreign-key check takes FOR KEY SHARE,
        # which FOR UPDATE would block (a deadlock across the two services).
        result = await self.session.execute(
            select(FederationGrant)
            .where(FederationGrant.id == grant_id)
            .with_for_update(key_share=True)
        )
        return result.scalar_one_or_none()

    async def mark_used(self, token_id: uuid.UUID, now: datetime) -> bool:
        result = await self.session.execute(
            update(FederationEnrollmentToken)
            .where(FederationEnrollmentToken.id == token_id)
            .where(FederationEnrollmentToken.used_at.is_(None))
            .values(used_at=now)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def activate_grant(self, grant_id: uuid.UUID, now: datetime) -> bool:
        """``pending → active`` only if still pending (the atomic guard of DESIGN §3)."""
        result = await self.session.execute(
            update(FederationGrant)
            .where(FederationGrant.id == grant_id)
            .where(FederationGrant.status == GrantStatus.PENDING)
            .values(status=GrantStatus.ACTIVE, activated_at=now)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def activate_peer(
        self,
        peer_id: uuid.UUID,
        *,
        serial: str,
        fingerprint: str,
        not_after: datetime,
        now: datetime,
    ) -> bool:
        """A pending or active peer becomes active with its newest certificate; a suspended or
        revoked peer is not brought back by an enrollment."""
        result = await self.session.execute(
            update(FederationPeer)
            .where(FederationPeer.id == peer_id)
            .where(FederationPeer.state.in_([PeerState.PENDING, PeerState.ACTIVE]))
            .values(
                state=PeerState.ACTIVE,
                cert_serial=serial,
                cert_fingerprint_sha256=fingerprint,
                cert_not_after=not_after,
                updated_at=now,
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]
