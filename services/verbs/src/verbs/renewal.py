"""Certificate renewal for peers (``POST /api/federation/v1/renew {csr_pem}``, DESIGN §5).

A peer presents its current certificate (the whole inbound trust path applies: proxy secret,
re-verified certificate, recorded and unrevoked serial, grant bound to subject and peer, grant
active and unexpired, peer active) and a CSR for a new key. The ca-broker signs it for the *same*
grant, subject user and peer — the broker builds every extension itself and refuses dead grants
or peers (``409 grant_not_issuable`` / ``peer_not_issuable``), and caps the lifetime at the
grant's expiry. The peer's current-certificate fields move to the new certificate; the old one
stays valid until it expires (calls in flight keep working) and is revoked with the grant.

Lock: the peer's and the grant's rows stay locked (``FOR NO KEY UPDATE``) from the count until
the new certificate is recorded, the CA's signature included, so renewals of one grant cannot
overshoot the bound below. A revocation waits for those locks, so the CA gets
``renewal_sign_deadline_seconds`` (a second below the lock timeout, checked at start) and not a
moment more, and renewals never queue for the locks (``NOWAIT``): a stalled CA fails the renewal
(``503 ca_unavailable``), it never makes a revoke time out.

Bound: while a grant already has ``max_live_certificates_per_grant`` unexpired, unrevoked
certificates, renewal is ``409 too_many_certificates`` — a peer cannot mint certificates in a
loop, yet a renewal whose answer was lost can be retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from fedcore import pki
from fedcore.broker_client import CaBrokerClient
from fedcore.errors import Conflict
from verbs import repository
from verbs.auth import ClientCertRevoked, FederationContext
from verbs.schemas import RenewRequest

VerbResult = tuple[dict[str, Any], int | None]


@dataclass
class Renewer:
    broker: CaBrokerClient
    max_live_certificates: int
    sign_deadline_seconds: float = 2.0

    async def renew(
        self, session: AsyncSession, context: FederationContext, body: RenewRequest
    ) -> VerbResult:
        await repository.lock_for_renewal(session, context.peer_id, context.grant_id)
        # Under the grant's lock: the presented certificate may have been revoked (on its own,
        # the grant still active) since the trust path read it; a revoked one mints nothing.
        if await repository.certificate_revoked(session, context.cert.serial):
            raise ClientCertRevoked("client certificate has been revoked")
        now = pki.utcnow()
        live = await repository.live_certificate_count(
            session, context.grant_id, context.peer_id, now
        )
        if live >= self.max_live_certificates:
            raise Conflict(
                "this grant has too many live certificates; renew when the older ones expired",
                code="too_many_certificates",
            )
        # Past the deadline: 503, this transaction records nothing and lets go of the locks.
        signed = await self.broker.sign(
            csr_pem=body.csr_pem,
            grant_id=context.grant_id,
            subject_user_id=context.subject_user_id,
            peer_id=context.peer_id,
            grant_status="active",
            deadline_seconds=self.sign_deadline_seconds,
        )
        await repository.record_peer_certificate(
            session,
            context.peer_id,
            signed.serial,
            signed.fingerprint_sha256,
            signed.not_after,
            now,
        )
        return (
            {
                "cert_pem": signed.cert_pem,
                "cert_chain_pem": signed.cert_chain_pem,
                "serial": signed.serial,
                "not_before": signed.not_before,
                "not_after": signed.not_after,
                "grant_id": context.grant_id,
                "subject_user_id": context.subject_user_id,
            },
            None,
        )
