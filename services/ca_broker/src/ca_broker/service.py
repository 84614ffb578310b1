"""CaService: sign a CSR with the federation profile, record it, revoke, publish the CRL."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from cryptography import x509
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ca_broker.backends import IssueRequest, SigningBackend
from ca_broker.crl import CrlPublisher
from ca_broker.postcheck import check_issued
from ca_broker.schemas import RevokeRequest, RevokeResponse, SignRequest, SignResponse
from fedcore import pki
from fedcore.csr import COMMON_NAME_RE, validate_csr
from fedcore.errors import BadRequest, Conflict, NotFound
from fedcore.issuance_lock import hold_for_issuance
from fedcore.models import (
    FederationCertificate,
    FederationGrant,
    FederationPeer,
    GrantStatus,
    PeerState,
)

log = logging.getLogger("ca_broker.service")


class CaService:
    def __init__(
        self,
        backend: SigningBackend,
        roots: list[x509.Certificate],
        default_ttl: timedelta,
        max_ttl: timedelta,
        crl: CrlPublisher | None,
    ) -> None:
        self.backend = backend
        self.roots = roots
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.crl = crl

    async def sign(self, session: AsyncSession, body: SignRequest) -> SignResponse:
        csr = validate_csr(body.csr_pem)
        peer, grant = await self._peer_and_grant(session, body.peer_id, body.grant_id)
        if grant.peer_id != peer.id or grant.subject_user_id != body.subject_user_id:
            # The broker will not mint an identity that contradicts the grant it names.
            raise BadRequest(
                "grant does not match the peer and subject user", code="grant_mismatch"
            )
        now = pki.utcnow()
        # The CA is the last gate: no certificate for a dead grant or peer, whoever asks. (No
        # row lock here: enrollment and renewal hold the grant's lock while they call us, and
        # a row lock of ours would wait for theirs; the last look below closes the gap.)
        _refuse_unless_issuable(grant.status, grant.expires_at, peer.state, now)
        if not COMMON_NAME_RE.fullmatch(peer.name):
            # The name becomes the certificate's CN; only plain names may (stops injection
            # through a row written around the admin API).
            raise Conflict("the peer's name is not usable as a CN", code="peer_not_issuable")
        requested = timedelta(seconds=body.ttl_seconds) if body.ttl_seconds else self.default_ttl
        lifetime = min(requested, self.max_ttl)
        if grant.expires_at is not None:
            lifetime = min(lifetime, grant.expires_at - now)  # never outlive the grant
        request = IssueRequest(
            csr=csr,
            csr_pem=body.csr_pem,
            peer_name=peer.name,
            peer_id=peer.id,
            grant_id=grant.id,
            subject_user_id=body.subject_user_id,
            lifetime=lifetime,
        )
        issued = await self.backend.issue(request)
        checked = check_issued(issued, request, self.roots)
        cert = checked.cert
        # The last look, after the backend signed (which may have taken long: the caller may
        # even have given up and let go of the grant) and under the issuance lock, held until
        # the row below commits: a revocation committed by now is seen here, and one committing
        # later lists this certificate (fedcore.issuance_lock). A refused certificate was
        # never recorded and never leaves this process.
        await hold_for_issuance(session, peer.id)
        await self._last_look(
            session, grant.id, peer.id, cert.not_valid_after_utc, body.grant_status
        )
        record = FederationCertificate(
            serial=pki.serial_hex(cert),
            grant_id=grant.id,
            peer_id=peer.id,
            fingerprint_sha256=pki.fingerprint_sha256(cert),
            subject_cn=peer.name,
            backend=self.backend.name,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )
        session.add(record)
        # Recorded before the answer leaves: a certificate the CA cannot revoke must not exist.
        await session.commit()
        log.info(
            "certificate issued",
            extra={"serial": record.serial, "grant_id": str(grant.id), "peer_id": str(peer.id)},
        )
        return SignResponse(
            cert_pem=checked.cert_pem,
            cert_chain_pem=checked.cert_pem + checked.chain_pem,
            serial=record.serial,
            fingerprint_sha256=record.fingerprint_sha256,
            not_before=record.not_before,
            not_after=record.not_after,
        )

    @staticmethod
    async def _last_look(
        session: AsyncSession,
        grant_id: uuid.UUID,
        peer_id: uuid.UUID,
        not_after: datetime,
        expected_status: str | None,
    ) -> None:
        # Columns, not session.get: the session's identity map would hand back the rows as read
        # before the backend signed.
        grant = (
            await session.execute(
                select(FederationGrant.status, FederationGrant.expires_at).where(
                    FederationGrant.id == grant_id
                )
            )
        ).one()
        peer_state = (
            await session.execute(select(FederationPeer.state).where(FederationPeer.id == peer_id))
        ).scalar_one()
        _refuse_unless_issuable(grant.status, grant.expires_at, peer_state, pki.utcnow())
        if expected_status is not None and grant.status != expected_status:
            # An enrollment that gave up while the grant was activated by its retry (or a
            # renewal racing something): the caller's view is stale, its answer never delivered.
            raise Conflict(
                "the grant is no longer in the state the request was made for",
                code="grant_not_issuable",
            )
        if grant.expires_at is not None and not_after > grant.expires_at + _EXPIRY_SLACK:
            # The lifetime was capped before signing; an expiry brought forward meanwhile must
            # not let the certificate outlive the grant. (Slack: the backend adds the capped
            # lifetime to its own, later clock; the trust path refuses an expired grant anyway.)
            raise Conflict("the certificate would outlive its grant", code="grant_not_issuable")

    async def _peer_and_grant(
        self, session: AsyncSession, peer_id: uuid.UUID, grant_id: uuid.UUID
    ) -> tuple[FederationPeer, FederationGrant]:
        peer = await session.get(FederationPeer, peer_id)
        grant = await session.get(FederationGrant, grant_id)
        if peer is None or grant is None:
            raise NotFound("peer or grant not found", code="grant_not_found")
        return peer, grant

    async def revoke(self, session: AsyncSession, body: RevokeRequest) -> RevokeResponse:
        record = (
            await session.execute(
                select(FederationCertificate)
                .where(FederationCertificate.serial == body.serial)
                .with_for_update()
            )
        ).scalar_one_or_none()
        if record is None:
            raise NotFound("no certificate with that serial", code="certificate_not_found")
        already = record.revoked_at is not None
        if not already:
            await session.execute(
                update(FederationCertificate)
                .where(FederationCertificate.id == record.id)
                .values(revoked_at=pki.utcnow(), revoked_reason=body.reason)
            )
            await session.commit()
            await session.refresh(record)
        crl_number = None
        # Publish after a new revocation, and also when a retry finds the serial revoked but not
        # yet on the CRL (a publish that failed after the revocation committed).
        if self.crl is not None and (
            not already
            or self.crl.current is None
            or record.serial not in self.crl.current.revoked_serials
        ):
            crl_number = (await self.crl.publish()).crl_number
        assert record.revoked_at is not None
        log.info("certificate revoked", extra={"serial": record.serial, "reason": body.reason})
        return RevokeResponse(
            serial=record.serial,
            revoked_at=record.revoked_at,
            already_revoked=already,
            crl_number=crl_number,
        )


_EXPIRY_SLACK = timedelta(minutes=1)


def _refuse_unless_issuable(
    grant_status: GrantStatus,
    grant_expires_at: datetime | None,
    peer_state: PeerState,
    now: datetime,
) -> None:
    if grant_status not in (GrantStatus.PENDING, GrantStatus.ACTIVE) or (
        grant_expires_at is not None and grant_expires_at <= now
    ):
        raise Conflict("the grant cannot receive certificates", code="grant_not_issuable")
    if peer_state not in (PeerState.PENDING, PeerState.ACTIVE):
        raise Conflict("the peer cannot receive certificates", code="peer_not_issuable")
