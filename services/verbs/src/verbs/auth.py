"""The inbound trust path (DESIGN §5, steps 1-6) for requests nginx forwards from peers.

1. the request came through nginx: proxy secret header, constant-time compare;
2-3. the forwarded certificate re-verified, its federation OIDs decoded (fedcore.client_cert);
4-6. the certificate's binding, read by serial: the certificate must be one the CA recorded
   (exact fingerprint) and not revoked; its grant must belong to the certificate's subject user and
   to the peer it was issued to; the peer must be active; the grant active and unexpired.

Every check runs on every request. The binding read itself may come from
:class:`~verbs.binding_cache.BindingCache`, which a database notification empties the moment any
certificate, grant, peer or team membership changes (and which never serves an entry older than
its hard age limit, nor anything while its listener is down): a revocation is refused as soon as
its commit is announced, milliseconds later (see docs/security.md).
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime

from fastapi import Request

from fedcore import pki
from fedcore.client_cert import ClientCertInvalid, ForwardedCertVerifier, VerifiedClientCert
from fedcore.errors import Forbidden, Unauthorized
from fedcore.models import GrantStatus, PeerState
from fedcore.scope import GrantScope
from fedcore.secret_strength import MIN_SECRET_LENGTH
from verbs.binding_cache import BindingCache
from verbs.reads import CertificateBinding, Connection, load_certificate_binding

PROXY_SECRET_HEADER = "x-mosaic-proxy-secret"  # noqa: S105 - a header name


class UntrustedProxy(Unauthorized):
    default_code = "untrusted_proxy"


class ClientCertRevoked(Unauthorized):
    default_code = "client_cert_revoked"


class GrantRefused(Forbidden):
    default_code = "grant_not_found"


@dataclass(frozen=True)
class FederationContext:
    cert: VerifiedClientCert
    grant_id: uuid.UUID
    subject_user_id: uuid.UUID
    peer_id: uuid.UUID
    peer_name: str
    scope: GrantScope
    expires_at: datetime | None
    # The subject user's teams now (read with the binding; the scope rule needs them).
    subject_team_ids: frozenset[uuid.UUID]


@dataclass
class PartialIdentity:
    """What the pipeline learnt before it refused (for the audit row)."""

    serial: str | None = None
    grant_id: uuid.UUID | None = None
    subject_user_id: uuid.UUID | None = None
    peer_id: uuid.UUID | None = None


class InboundAuthenticator:
    def __init__(
        self,
        verifier: ForwardedCertVerifier,
        proxy_secret: str,
        bindings: BindingCache | None = None,
    ) -> None:
        if len(proxy_secret) < MIN_SECRET_LENGTH:
            # An empty secret would match a request that carries no header at all.
            raise ValueError(f"the proxy secret must be at least {MIN_SECRET_LENGTH} characters")
        self.verifier = verifier
        self._proxy_secret = proxy_secret.encode()
        self.bindings = bindings

    def check_proxy(self, request: Request) -> None:
        presented = request.headers.get(PROXY_SECRET_HEADER, "").encode()
        # Constant time: the comparison must not reveal how much of a guess was right.
        if not hmac.compare_digest(presented, self._proxy_secret):
            raise UntrustedProxy("request did not come through the gateway's proxy")

    async def authenticate(
        self, request: Request, conn: Connection, known: PartialIdentity, *, fresh: bool = False
    ) -> FederationContext:
        """The trust path; ``fresh`` reads the binding from the database even when cached (for
        a call that mints a credential: renewal)."""
        self.check_proxy(request)
        if request.headers.get("x-client-verify") != "SUCCESS":
            raise ClientCertInvalid("the proxy did not verify a client certificate")
        now = pki.utcnow()
        cert = self.verifier.verify(request.headers.get("x-client-cert"), now)
        known.serial = cert.serial
        known.grant_id = cert.identity.grant_id
        known.subject_user_id = cert.identity.subject_user_id

        binding = await self._binding(conn, cert.serial, fresh)
        if binding is None or binding.fingerprint_sha256 != cert.fingerprint_sha256:
            # Not a certificate this CA recorded (e.g. issued around the broker): refuse it.
            raise ClientCertRevoked(
                "client certificate is not known to this gateway", code="client_cert_unknown"
            )
        known.peer_id = binding.cert_peer_id
        if binding.revoked_at is not None:
            raise ClientCertRevoked("client certificate has been revoked")
        if (
            binding.grant_id != cert.identity.grant_id
            or binding.grant_subject_user_id != cert.identity.subject_user_id
            or binding.grant_peer_id != binding.cert_peer_id
        ):
            raise GrantRefused("no grant matches this certificate")
        if binding.grant_status == GrantStatus.REVOKED:
            raise Forbidden("the grant has been revoked", code="grant_revoked")
        if binding.grant_status == GrantStatus.PENDING:
            raise Forbidden("the grant is not active yet", code="grant_pending")
        if binding.grant_status == GrantStatus.EXPIRED or (
            binding.grant_expires_at is not None and binding.grant_expires_at <= now
        ):
            raise Forbidden("the grant has expired", code="grant_expired")
        if binding.peer_state != PeerState.ACTIVE:  # an admin suspended or revoked the peer
            raise Forbidden("the peer is not active", code="peer_not_active")
        return FederationContext(
            cert=cert,
            grant_id=binding.grant_id,
            subject_user_id=binding.grant_subject_user_id,
            peer_id=binding.cert_peer_id,
            peer_name=binding.peer_name,
            scope=_stored_scope(binding),
            expires_at=binding.grant_expires_at,
            subject_team_ids=binding.subject_team_ids,
        )

    async def _binding(
        self, conn: Connection, serial: str, fresh: bool
    ) -> CertificateBinding | None:
        if self.bindings is None:
            return await load_certificate_binding(conn, serial)
        cached = None if fresh else self.bindings.get(serial)
        if cached is not None:
            return cached
        token = self.bindings.begin_read()  # before the read: see BindingCache.store
        binding = await load_certificate_binding(conn, serial)
        if binding is not None and token is not None:
            self.bindings.store(serial, binding, token)
        return binding


def _stored_scope(binding: CertificateBinding) -> GrantScope:
    if binding.grant_scope is None:
        # A stored scope the current schema refuses: deny, without describing the grant's
        # configuration to the peer.
        raise Forbidden("the grant cannot be used", code="grant_invalid")
    return binding.grant_scope
