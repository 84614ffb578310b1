"""Redeeming an enrollment token: claim, CSR → ca-broker, activation, audit — one transaction.

Order matters: every check that can refuse runs before the CA is asked to sign, and everything
after signing commits together. If signing or anything after it fails, the transaction rolls
back: the token stays unused and the grant pending (the reference system burned the token here),
and a certificate that was issued but never delivered is revoked at the broker.

Locks: the peer's row (``NOWAIT``: a concurrent redemption for the same peer fails at once with
``503 database_busy`` instead of queueing), then the grant's, then the token's. A revocation of
the grant or the peer waits for them, so the CA call they cover has a deadline below the lock
timeout (``ca_deadline_seconds``) and the CA bundle is fetched before taking them: a stalled CA
(and a token holder retrying against it) never makes an admin's revoke time out.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from enrollment.repository import EnrollmentTokenRepository
from enrollment.schemas import EnrollmentRequest, EnrollmentResponse
from fedcore import pki
from fedcore.audit import AuditEvent, write_audit, write_audit_now
from fedcore.broker_client import CaBrokerClient
from fedcore.csr import validate_csr
from fedcore.db import contention_error
from fedcore.errors import Conflict, DomainError, Gone, NotFound
from fedcore.issuance_lock import wait_for_issuances
from fedcore.models import (
    ActorType,
    AuditOutcome,
    FederationCertificate,
    FederationEnrollmentToken,
    GrantStatus,
    PeerState,
)
from fedcore.tokens import hash_token, log_prefix

log = logging.getLogger("enrollment.service")
_TOKEN_SHAPE = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class EnrollmentService:
    broker: CaBrokerClient
    sessionmaker: async_sessionmaker[AsyncSession]
    public_url: str
    ca_deadline_seconds: float = 2.0

    async def redeem(
        self, session: AsyncSession, token: str, body: EnrollmentRequest
    ) -> EnrollmentResponse:
        known = _KnownSoFar()
        try:
            try:
                return await self._redeem(session, token, body, known)
            except Exception as exc:
                busy = contention_error(exc)
                if busy is None:
                    raise
                raise busy from None
        except DomainError as refusal:
            await session.rollback()
            outcome = AuditOutcome.ERROR if refusal.status_code >= 500 else AuditOutcome.DENIED
            # Every attempt leaves a row, in its own transaction (the main one rolled back).
            await write_audit_now(
                self.sessionmaker, known.event(token, outcome, reason_code=refusal.code)
            )
            log.info(
                "enrollment refused",
                extra={"token_prefix": log_prefix(token), "code": refusal.code},
            )
            raise

    async def _revoke_undelivered(
        self, session: AsyncSession, grant_id: uuid.UUID, peer_id: uuid.UUID, delivered: str
    ) -> None:
        """After the grant's activation committed: record as revoked its other live
        certificates — those of earlier attempts that gave up on a slow CA while the broker
        still recorded them (never delivered; they would count against the renewal bound).
        Signatures past the broker's last look are waited for (fedcore.issuance_lock); later
        ones see an active grant and are refused (the request said ``pending``).

        One statement, no call to the broker: the verbs refuse a revoked serial at once, and
        nobody holds these certificates, so the CRL can wait for the broker's next refresh.
        Best effort: the enrollment has succeeded whatever happens here."""
        try:
            await wait_for_issuances(session, peer_id)
            serials = list(
                (
                    await session.execute(
                        update(FederationCertificate)
                        .where(
                            FederationCertificate.grant_id == grant_id,
                            FederationCertificate.peer_id == peer_id,
                            FederationCertificate.revoked_at.is_(None),
                            FederationCertificate.serial != delivered,
                        )
                        .values(revoked_at=pki.utcnow(), revoked_reason="enrollment_undelivered")
                        .returning(FederationCertificate.serial)
                    )
                ).scalars()
            )
            await session.commit()
        except Exception as exc:
            with contextlib.suppress(Exception):
                await session.rollback()
            log.warning(
                "could not revoke undelivered certificates", extra={"error": type(exc).__name__}
            )
            return
        if serials:
            log.info("undelivered certificates revoked", extra={"serials": serials[:20]})

    async def _redeem(
        self, session: AsyncSession, token: str, body: EnrollmentRequest, known: _KnownSoFar
    ) -> EnrollmentResponse:
        if not _TOKEN_SHAPE.match(token):
            raise NotFound("unknown enrollment token", code="token_unknown")
        repo = EnrollmentTokenRepository(session)
        found = await repo.find_by_hash(hash_token(token))
        if found is None:
            raise NotFound("unknown enrollment token", code="token_unknown")
        known.grant_id, known.peer_id = found.grant_id, found.peer_id
        _refuse_unusable_token(found, pki.utcnow())  # early (unlocked): no CA call for these
        # Before the locks: no call to the broker but the signature is made while holding them.
        bundle = await self.broker.ca_bundle_pem()
        peer = await repo.lock_peer(found.peer_id)
        grant = await repo.lock_grant(found.grant_id)
        record = await repo.lock_token(found.id)
        now = pki.utcnow()
        _refuse_unusable_token(record, now)  # again, under the lock: this one decides

        if grant is None or grant.status != GrantStatus.PENDING:
            raise Conflict("the grant is not awaiting enrollment", code="grant_not_pending")
        known.subject_user_id = grant.subject_user_id
        if grant.expires_at is not None and grant.expires_at <= now:
            raise Conflict("the grant has expired", code="grant_not_pending")
        if grant.peer_id != record.peer_id:  # tokens are minted per grant+peer; belt and braces
            raise Conflict("token and grant disagree on the peer", code="grant_not_pending")
        if peer is None or peer.state not in (PeerState.PENDING, PeerState.ACTIVE):
            raise Conflict("the peer may not enroll", code="peer_not_enrollable")

        validate_csr(body.csr_pem)  # refuse early; the broker checks again
        # Past the deadline: 503, nothing recorded here, the locks go with the rollback.
        signed = await self.broker.sign(
            csr_pem=body.csr_pem,
            grant_id=grant.id,
            subject_user_id=grant.subject_user_id,
            peer_id=peer.id,
            grant_status="pending",
            deadline_seconds=self.ca_deadline_seconds,
        )
        try:
            if not await repo.mark_used(record.id, now):
                raise Gone("enrollment token already used", code="token_used")
            if not await repo.activate_grant(grant.id, now):
                raise Conflict("the grant is not awaiting enrollment", code="grant_not_pending")
            if not await repo.activate_peer(
                peer.id,
                serial=signed.serial,
                fingerprint=signed.fingerprint_sha256,
                not_after=signed.not_after,
                now=now,
            ):
                raise Conflict("the peer may not enroll", code="peer_not_enrollable")
            await write_audit(
                session, known.event(token, AuditOutcome.ALLOWED, cert_serial=signed.serial)
            )
            await session.commit()
        except BaseException:
            await session.rollback()
            # Issued but never delivered: take it off the table at once.
            with contextlib.suppress(DomainError):
                await self.broker.revoke(signed.serial, "enrollment_aborted")
            raise
        await self._revoke_undelivered(session, grant.id, peer.id, signed.serial)
        log.info(
            "enrollment completed",
            extra={
                "token_prefix": log_prefix(token),
                "grant_id": str(grant.id),
                "peer_id": str(peer.id),
                "serial": signed.serial,
            },
        )
        return EnrollmentResponse(
            cert_pem=signed.cert_pem,
            cert_chain_pem=signed.cert_chain_pem,
            ca_bundle_pem=bundle,
            grant_id=grant.id,
            subject_user_id=grant.subject_user_id,
            peer_id=peer.id,
            not_after=signed.not_after,
            endpoint=self.public_url,
        )


def _refuse_unusable_token(record: FederationEnrollmentToken, now: datetime) -> None:
    if record.used_at is not None:
        raise Gone("enrollment token already used", code="token_used")
    if record.revoked_at is not None:
        raise Gone("enrollment token was revoked", code="token_revoked")
    if record.expires_at <= now:
        raise Gone("enrollment token expired", code="token_expired")


@dataclass
class _KnownSoFar:
    """What the redemption has learnt, so a refusal's audit row says as much as it can."""

    grant_id: uuid.UUID | None = None
    peer_id: uuid.UUID | None = None
    subject_user_id: uuid.UUID | None = None

    def event(
        self,
        token: str,
        outcome: AuditOutcome,
        reason_code: str | None = None,
        cert_serial: str | None = None,
    ) -> AuditEvent:
        return AuditEvent(
            actor_type=ActorType.ENROLLMENT,
            # Only a well-formed token's prefix is stored: the path is the caller's text.
            actor_id=f"token:{log_prefix(token)}"
            if _TOKEN_SHAPE.match(token)
            else "token:malformed",
            action="enrollment.redeem",
            outcome=outcome,
            reason_code=reason_code,
            grant_id=self.grant_id,
            peer_id=self.peer_id,
            subject_user_id=self.subject_user_id,
            cert_serial=cert_serial,
        )
