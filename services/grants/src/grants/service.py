"""Domain logic of the admin API: users and teams, peers, grants, enrollment tokens, outbound
connections and the audit log.

Rules that hold for every mutating action:

* it runs in the request's unit of work and writes exactly one ``federation_audit_log`` row for
  itself (actor = the admin token id) in the same transaction; cascaded state changes (a peer's
  grants revoked with it, grants found expired) add one row each;
* a refusal raises a domain error with a stable code, the transaction rolls back (the rows are
  unchanged), and the refusal is audited in a transaction of its own (``write_audit_now``);
* state changes follow the tables :data:`GRANT_TRANSITIONS` and :data:`ADMIN_PEER_TRANSITIONS`;
  anything else is ``409 invalid_transition``.

Grant expiry is computed, not scheduled: whenever grants are read, live grants past
``expires_at`` are persisted as ``expired`` (committed at once, so a refused action does not undo
it) and audited as a ``system`` action.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fedcore import pki
from fedcore.admin_auth import AdminPrincipal
from fedcore.audit import AuditEvent, write_audit, write_audit_now
from fedcore.broker_client import CaBrokerClient
from fedcore.csr import make_csr
from fedcore.errors import (
    BadRequest,
    Conflict,
    DomainError,
    NotFound,
    Unprocessable,
    UpstreamUnavailable,
)
from fedcore.federation_oids import MalformedFederationIdentity, extract_federation_identity
from fedcore.issuance_lock import wait_for_issuances
from fedcore.models import (
    ActorType,
    AuditOutcome,
    ConnectionState,
    FederationCertificate,
    FederationConnection,
    FederationGrant,
    FederationPeer,
    GrantStatus,
    PeerState,
    Team,
    User,
)
from fedcore.scope import GrantScope, check_scope_policy
from fedcore.sealing import PURPOSE_CONNECTION_KEY
from fedcore.tokens import hash_token, new_token
from grants import schemas
from grants.renewal import renew_connection
from grants.repository import (
    AuditFilters,
    AuditRepository,
    ConnectionRepository,
    EnrollmentTokenRepository,
    GrantFilters,
    GrantRef,
    GrantRepository,
    PeerRepository,
    TeamRepository,
    UserRepository,
)
from grants.settings import Settings

log = logging.getLogger("grants.service")

CONNECTION_KEY_PURPOSE: Final = PURPOSE_CONNECTION_KEY
ENROLLMENT_PATH: Final = "/api/federation/v1/enrollment/"

# The whole grant machine. pending -> active belongs to enrollment (atomic
# ``UPDATE ... WHERE status = 'pending'``); the admin API drives -> revoked; -> expired is
# computed from expires_at when a grant is read.
GRANT_TRANSITIONS: Final[dict[GrantStatus, frozenset[GrantStatus]]] = {
    GrantStatus.PENDING: frozenset({GrantStatus.ACTIVE, GrantStatus.REVOKED, GrantStatus.EXPIRED}),
    GrantStatus.ACTIVE: frozenset({GrantStatus.REVOKED, GrantStatus.EXPIRED}),
    GrantStatus.REVOKED: frozenset(),
    GrantStatus.EXPIRED: frozenset(),
}

# The peer machine as the admin API may drive it. pending -> active happens only by enrolling
# (a peer without a certificate cannot be "active"); revoked is terminal.
PEER_TRANSITIONS: Final[dict[PeerState, frozenset[PeerState]]] = {
    PeerState.PENDING: frozenset({PeerState.ACTIVE, PeerState.REVOKED}),
    PeerState.ACTIVE: frozenset({PeerState.SUSPENDED, PeerState.REVOKED}),
    PeerState.SUSPENDED: frozenset({PeerState.ACTIVE, PeerState.REVOKED}),
    PeerState.REVOKED: frozenset(),
}
ADMIN_PEER_TRANSITIONS: Final[dict[PeerState, frozenset[PeerState]]] = {
    **PEER_TRANSITIONS,
    PeerState.PENDING: frozenset({PeerState.REVOKED}),
}
PEER_ACTIONS: Final = {
    PeerState.ACTIVE: "peer.resume",
    PeerState.SUSPENDED: "peer.suspend",
    PeerState.REVOKED: "peer.revoke",
}


class InvalidTransition(Conflict):
    default_code = "invalid_transition"


def utcnow() -> datetime:
    return pki.utcnow()


# ------------------------------------------------------------------------------ context, audit


@dataclass(frozen=True)
class AdminContext:
    session: AsyncSession
    sessionmaker: async_sessionmaker[AsyncSession]
    principal: AdminPrincipal
    settings: Settings
    broker: CaBrokerClient


class AuditNote:
    """The audit event of the action in progress; the action fills in ids as it learns them."""

    def __init__(self, event: AuditEvent) -> None:
        self.event = event

    def note(self, **changes: Any) -> None:
        self.event = dataclasses.replace(self.event, **changes)


@asynccontextmanager
async def audited(
    ctx: AdminContext, action: str, resource: str, **fields: Any
) -> AsyncIterator[AuditNote]:
    """Run one admin action: audit it as allowed in the same transaction, or, when it raises,
    as denied (domain error) / error (anything else) in a transaction of its own."""
    note = AuditNote(
        AuditEvent(
            actor_type=ActorType.ADMIN_TOKEN,
            actor_id=ctx.principal.actor_id,
            action=action,
            resource=resource,
            outcome=AuditOutcome.ALLOWED,
            **fields,
        )
    )
    try:
        yield note
    except DomainError as exc:
        await _audit_now(ctx, note.event.with_outcome(AuditOutcome.DENIED, exc.code))
        raise
    except Exception:
        await _audit_now(ctx, note.event.with_outcome(AuditOutcome.ERROR, "internal_error"))
        raise
    await write_audit(ctx.session, note.event)


async def _audit_now(ctx: AdminContext, event: AuditEvent) -> None:
    try:
        await write_audit_now(ctx.sessionmaker, event)
    except Exception as exc:  # the refusal stands even if its audit row cannot be written
        log.error("could not audit a refused action", extra={"error": type(exc).__name__})


async def _record_system_changes(
    session: AsyncSession, action: str, grants: Collection[GrantRef], reason: str | None
) -> None:
    for grant in grants:
        await write_audit(
            session,
            AuditEvent(
                actor_type=ActorType.SYSTEM,
                action=action,
                resource="grant",
                target_id=str(grant.id),
                grant_id=grant.id,
                peer_id=grant.peer_id,
                subject_user_id=grant.subject_user_id,
                outcome=AuditOutcome.ALLOWED,
                reason_code=reason,
            ),
        )


async def persist_expired(
    session: AsyncSession, grant_ids: Collection[uuid.UUID] | None = None
) -> list[GrantRef]:
    """Mark live grants past ``expires_at`` as expired and commit at once (see module doc)."""
    expired = await GrantRepository(session).expire_due(utcnow(), grant_ids)
    if expired:
        await _record_system_changes(session, "grant.expire", expired, "expires_at_passed")
        await session.commit()
        log.info("grants expired", extra={"grant_ids": [str(g.id) for g in expired]})
    return expired


async def _live_serials_after_issuances(
    session: AsyncSession, peer_id: uuid.UUID, grant_ids: list[uuid.UUID] | None
) -> list[str]:
    """The live certificates a committed revocation must revoke — of ``grant_ids``, or of every
    grant of the peer (``None``) — listed once every signature for the peer already past the
    broker's last look has committed (fedcore.issuance_lock); every later signature sees the
    revocation and refuses. The lock goes with this short transaction, before any call to the
    broker."""
    await wait_for_issuances(session, peer_id)
    serials = await GrantRepository(session).live_certificate_serials(
        peer_id=peer_id, grant_ids=grant_ids
    )
    await session.commit()
    return serials


async def revoke_certificates(
    ctx: AdminContext, serials: list[str], reason: str
) -> list[schemas.CertificateRevocationOut]:
    """Ask the broker to revoke (it records the serial and republishes the CRL). If it cannot,
    record the revocation in ``federation_certificates`` directly: the verbs refuse the serial at
    once and the broker's CRL refresher picks it up on its next run."""
    results = []
    for serial in serials:
        status: Literal["revoked", "already_revoked"] | None
        try:
            status = "already_revoked" if await ctx.broker.revoke(serial, reason) else "revoked"
        except DomainError as exc:
            log.warning(
                "ca-broker could not revoke; recording it directly",
                extra={"serial": serial, "code": exc.code},
            )
            status = None
        if status is None:
            await ctx.session.execute(
                update(FederationCertificate)
                .where(
                    FederationCertificate.serial == serial,
                    FederationCertificate.revoked_at.is_(None),
                )
                .values(revoked_at=utcnow(), revoked_reason=reason)
            )
            await ctx.session.commit()
            results.append(schemas.CertificateRevocationOut(serial=serial, status="recorded"))
        else:
            results.append(schemas.CertificateRevocationOut(serial=serial, status=status))
    return results


# ------------------------------------------------------------------------------ users, teams


def _user_out(user: User, team_ids: list[uuid.UUID]) -> schemas.UserOut:
    return schemas.UserOut(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        created_at=user.created_at,
        team_ids=team_ids,
    )


def _team_out(team: Team, member_ids: list[uuid.UUID]) -> schemas.TeamOut:
    return schemas.TeamOut(
        id=team.id, name=team.name, created_at=team.created_at, member_ids=member_ids
    )


class UserService:
    @staticmethod
    async def create(ctx: AdminContext, body: schemas.UserCreate) -> schemas.UserOut:
        async with audited(ctx, "user.create", "user") as audit:
            user = await UserRepository(ctx.session).insert(body.username, body.display_name)
            if user is None:
                raise Conflict("a user with this username exists", code="username_taken")
            audit.note(target_id=str(user.id), subject_user_id=user.id)
        log.info("user created", extra={"user_id": str(user.id)})
        return _user_out(user, [])

    @staticmethod
    async def get(session: AsyncSession, user_id: uuid.UUID) -> schemas.UserOut:
        repo = UserRepository(session)
        user = await repo.get(user_id)
        if user is None:
            raise NotFound("no such user", code="user_not_found")
        return _user_out(user, await repo.team_ids(user_id))

    @staticmethod
    async def page(
        session: AsyncSession, limit: int, cursor: str | None
    ) -> schemas.Page[schemas.UserOut]:
        repo = UserRepository(session)
        found = await repo.page(limit, cursor)
        teams = await repo.team_ids_of_many([user.id for user in found.rows])
        return schemas.Page[schemas.UserOut](
            items=[_user_out(user, teams[user.id]) for user in found.rows],
            next_cursor=found.next_cursor,
        )


class TeamService:
    @staticmethod
    async def create(ctx: AdminContext, body: schemas.TeamCreate) -> schemas.TeamOut:
        async with audited(ctx, "team.create", "team") as audit:
            team = await TeamRepository(ctx.session).insert(body.name)
            if team is None:
                raise Conflict("a team with this name exists", code="team_name_taken")
            audit.note(target_id=str(team.id))
        log.info("team created", extra={"team_id": str(team.id)})
        return _team_out(team, [])

    @staticmethod
    async def get(session: AsyncSession, team_id: uuid.UUID) -> schemas.TeamOut:
        repo = TeamRepository(session)
        team = await repo.get(team_id)
        if team is None:
            raise NotFound("no such team", code="team_not_found")
        return _team_out(team, [member.user_id for member in await repo.members(team_id)])

    @staticmethod
    async def page(
        session: AsyncSession, limit: int, cursor: str | None
    ) -> schemas.Page[schemas.TeamOut]:
        repo = TeamRepository(session)
        found = await repo.page(limit, cursor)
        members = await repo.member_ids_of_many([team.id for team in found.rows])
        return schemas.Page[schemas.TeamOut](
            items=[_team_out(team, members[team.id]) for team in found.rows],
            next_cursor=found.next_cursor,
        )

    @staticmethod
    async def members(session: AsyncSession, team_id: uuid.UUID) -> list[schemas.MembershipOut]:
        repo = TeamRepository(session)
        if await repo.get(team_id) is None:
            raise NotFound("no such team", code="team_not_found")
        return [
            schemas.MembershipOut(team_id=m.team_id, user_id=m.user_id, created_at=m.created_at)
            for m in await repo.members(team_id)
        ]

    @staticmethod
    async def add_member(
        ctx: AdminContext, team_id: uuid.UUID, body: schemas.MembershipCreate
    ) -> schemas.MembershipOut:
        async with audited(
            ctx,
            "team.add_member",
            "team",
            target_id=str(team_id),
            subject_user_id=body.user_id,
        ):
            teams = TeamRepository(ctx.session)
            if await teams.get(team_id) is None:
                raise NotFound("no such team", code="team_not_found")
            if await UserRepository(ctx.session).get(body.user_id) is None:
                raise NotFound("no such user", code="user_not_found")
            member = await teams.add_member(team_id, body.user_id)
            if member is None:
                raise Conflict("the user already is a member of the team", code="already_member")
        return schemas.MembershipOut(
            team_id=member.team_id, user_id=member.user_id, created_at=member.created_at
        )


# ------------------------------------------------------------------------------ peers


def peer_out(peer: FederationPeer) -> schemas.PeerOut:
    return schemas.PeerOut(
        id=peer.id,
        name=peer.name,
        endpoint_url=peer.endpoint_url,
        state=peer.state,
        cert_serial=peer.cert_serial,
        cert_fingerprint_sha256=peer.cert_fingerprint_sha256,
        cert_not_after=peer.cert_not_after,
        created_at=peer.created_at,
        updated_at=peer.updated_at,
    )


class PeerService:
    @staticmethod
    async def create(ctx: AdminContext, body: schemas.PeerCreate) -> schemas.PeerOut:
        async with audited(ctx, "peer.create", "peer") as audit:
            peer = await PeerRepository(ctx.session).insert(body.name, body.endpoint_url)
            if peer is None:
                raise Conflict("a peer with this name exists", code="peer_name_taken")
            audit.note(target_id=str(peer.id), peer_id=peer.id)
        log.info("peer created", extra={"peer_id": str(peer.id)})
        return peer_out(peer)

    @staticmethod
    async def get(session: AsyncSession, peer_id: uuid.UUID) -> schemas.PeerOut:
        peer = await PeerRepository(session).get(peer_id)
        if peer is None:
            raise NotFound("no such peer", code="peer_not_found")
        return peer_out(peer)

    @staticmethod
    async def page(
        session: AsyncSession, state: PeerState | None, limit: int, cursor: str | None
    ) -> schemas.Page[schemas.PeerOut]:
        found = await PeerRepository(session).page(state, limit, cursor)
        return schemas.Page[schemas.PeerOut](
            items=[peer_out(peer) for peer in found.rows], next_cursor=found.next_cursor
        )

    @staticmethod
    async def change_state(
        ctx: AdminContext, peer_id: uuid.UUID, body: schemas.PeerStateChange
    ) -> schemas.PeerTransitionOut:
        target = PeerState(body.state)
        now = utcnow()
        revoked: list[GrantRef] = []
        async with audited(
            ctx, PEER_ACTIONS[target], "peer", target_id=str(peer_id), peer_id=peer_id
        ):
            peers = PeerRepository(ctx.session)
            peer = await peers.get(peer_id, for_update=True)
            if peer is None:
                raise NotFound("no such peer", code="peer_not_found")
            if target not in ADMIN_PEER_TRANSITIONS[peer.state]:
                raise InvalidTransition(_peer_refusal(peer.state, target))
            await peers.set_state(peer_id, target, now)
            if target is PeerState.REVOKED:
                # A revoked peer keeps nothing: its live grants and unused tokens go with it.
                revoked = await GrantRepository(ctx.session).revoke_live_of_peer(
                    peer_id, body.reason or "peer revoked", now
                )
                await EnrollmentTokenRepository(ctx.session).revoke_unused(
                    [g.id for g in revoked], now
                )
                await _record_system_changes(ctx.session, "grant.revoke", revoked, "peer_revoked")
        await ctx.session.commit()
        log.info("peer state changed", extra={"peer_id": str(peer_id), "state": target.value})
        certificates: list[schemas.CertificateRevocationOut] = []
        if target is PeerState.REVOKED:
            serials = await _live_serials_after_issuances(ctx.session, peer_id, None)
            certificates = await revoke_certificates(ctx, serials, "peer_revoked")
        peer = await PeerRepository(ctx.session).get(peer_id)
        assert peer is not None
        return schemas.PeerTransitionOut(
            **peer_out(peer).model_dump(),
            revoked_grant_ids=[g.id for g in revoked],
            certificate_revocations=certificates,
        )


def _peer_refusal(current: PeerState, target: PeerState) -> str:
    if current is PeerState.REVOKED:
        return "the peer is revoked; revoked is terminal"
    if current is PeerState.PENDING and target is PeerState.ACTIVE:
        return "a pending peer becomes active only by enrolling"
    article = "an" if current.value[0] in "aeiou" else "a"
    return f"{article} {current.value} peer cannot become {target.value}"


# ------------------------------------------------------------------------------ grants, tokens


def grant_out(grant: FederationGrant) -> schemas.GrantOut:
    return schemas.GrantOut(
        id=grant.id,
        subject_user_id=grant.subject_user_id,
        peer_id=grant.peer_id,
        scope=grant.scope,
        status=grant.status,
        expires_at=grant.expires_at,
        activated_at=grant.activated_at,
        revoked_at=grant.revoked_at,
        revoked_reason=grant.revoked_reason,
        created_at=grant.created_at,
    )


async def _gateway_ca_fingerprint(settings: Settings) -> str | None:
    if not settings.ca_bundle_path:
        return None
    try:
        # Read per request: the broker (re)writes the bundle; it is a few kilobytes.
        bundle = await asyncio.to_thread(Path(settings.ca_bundle_path).read_bytes)
        return pki.bundle_root_fingerprint(bundle)
    except (OSError, ValueError, IndexError):
        raise UpstreamUnavailable(
            "the gateway's CA bundle is not available yet", code="ca_bundle_unavailable"
        ) from None


class GrantService:
    @staticmethod
    async def create(ctx: AdminContext, body: schemas.GrantCreate) -> schemas.GrantOut:
        async with audited(
            ctx,
            "grant.create",
            "grant",
            peer_id=body.peer_id,
            subject_user_id=body.subject_user_id,
        ) as audit:
            if await UserRepository(ctx.session).get(body.subject_user_id) is None:
                raise NotFound("no such user", code="user_not_found")
            peer = await PeerRepository(ctx.session).get(body.peer_id, for_update=True)
            if peer is None:
                raise NotFound("no such peer", code="peer_not_found")
            if peer.state is PeerState.REVOKED:
                raise Conflict("the peer is revoked", code="peer_revoked")
            scope = GrantScope.from_json(body.scope)
            members = await TeamRepository(ctx.session).teams_of_user_among(
                body.subject_user_id, scope.include_teams
            )
            check_scope_policy(scope, ctx.settings.scope_policy(), members)
            if body.expires_at is not None and body.expires_at <= utcnow():
                raise Unprocessable("expires_at must be in the future", code="invalid_expiry")
            grant = await GrantRepository(ctx.session).insert(
                body.subject_user_id, body.peer_id, scope.to_json(), body.expires_at
            )
            audit.note(target_id=str(grant.id), grant_id=grant.id)
        log.info("grant created", extra={"grant_id": str(grant.id), "peer_id": str(body.peer_id)})
        return grant_out(grant)

    @staticmethod
    async def get(session: AsyncSession, grant_id: uuid.UUID) -> schemas.GrantOut:
        await persist_expired(session, [grant_id])
        grant = await GrantRepository(session).get(grant_id)
        if grant is None:
            raise NotFound("no such grant", code="grant_not_found")
        return grant_out(grant)

    @staticmethod
    async def page(
        session: AsyncSession, filters: GrantFilters, limit: int, cursor: str | None
    ) -> schemas.Page[schemas.GrantOut]:
        await persist_expired(session)
        found = await GrantRepository(session).page(filters, limit, cursor)
        return schemas.Page[schemas.GrantOut](
            items=[grant_out(grant) for grant in found.rows], next_cursor=found.next_cursor
        )

    @staticmethod
    async def revoke(
        ctx: AdminContext, grant_id: uuid.UUID, body: schemas.GrantRevoke
    ) -> schemas.GrantRevokeOut:
        await persist_expired(ctx.session, [grant_id])
        now = utcnow()
        async with audited(
            ctx, "grant.revoke", "grant", target_id=str(grant_id), grant_id=grant_id
        ) as audit:
            grants = GrantRepository(ctx.session)
            grant = await grants.get(grant_id, for_update=True)
            if grant is None:
                raise NotFound("no such grant", code="grant_not_found")
            audit.note(peer_id=grant.peer_id, subject_user_id=grant.subject_user_id)
            if GrantStatus.REVOKED not in GRANT_TRANSITIONS[grant.status]:
                raise InvalidTransition(
                    f"the grant is {grant.status.value}; {grant.status.value} is terminal"
                )
            await grants.revoke(grant_id, body.reason, now)
            token_count = await EnrollmentTokenRepository(ctx.session).revoke_unused(
                [grant_id], now
            )
        await ctx.session.commit()
        log.info("grant revoked", extra={"grant_id": str(grant_id)})
        serials = await _live_serials_after_issuances(ctx.session, grant.peer_id, [grant_id])
        certificates = await revoke_certificates(ctx, serials, "grant_revoked")
        revoked = await GrantRepository(ctx.session).get(grant_id)
        assert revoked is not None
        return schemas.GrantRevokeOut(
            **grant_out(revoked).model_dump(),
            revoked_token_count=token_count,
            certificate_revocations=certificates,
        )

    @staticmethod
    async def issue_token(
        ctx: AdminContext, grant_id: uuid.UUID, body: schemas.TokenCreate
    ) -> schemas.TokenOut:
        await persist_expired(ctx.session, [grant_id])
        now = utcnow()
        async with audited(
            ctx, "grant.token", "enrollment_token", grant_id=grant_id, peer_id=body.peer_id
        ) as audit:
            grant = await GrantRepository(ctx.session).get(grant_id, for_update=True)
            if grant is None:
                raise NotFound("no such grant", code="grant_not_found")
            audit.note(peer_id=grant.peer_id, subject_user_id=grant.subject_user_id)
            if body.peer_id is not None and body.peer_id != grant.peer_id:
                raise BadRequest("the grant belongs to another peer", code="peer_mismatch")
            if grant.status is not GrantStatus.PENDING:
                raise Conflict(
                    f"the grant is {grant.status.value}; tokens are issued only for pending grants",
                    code="grant_not_pending",
                )
            peer = await PeerRepository(ctx.session).get(grant.peer_id)
            assert peer is not None  # foreign key
            if peer.state in (PeerState.SUSPENDED, PeerState.REVOKED):
                raise Conflict(f"the peer is {peer.state.value}", code=f"peer_{peer.state.value}")
            ca_fingerprint = await _gateway_ca_fingerprint(ctx.settings)
            tokens = EnrollmentTokenRepository(ctx.session)
            revoked_others = (
                await tokens.revoke_unused([grant_id], now) if body.revoke_others else 0
            )
            ttl = body.ttl_seconds or ctx.settings.enrollment_token_ttl_default
            token = new_token()
            expires_at = now + timedelta(seconds=ttl)
            token_id = await tokens.insert(hash_token(token), grant_id, grant.peer_id, expires_at)
            audit.note(target_id=str(token_id))
        # The token id, never the token: the token is a bearer secret (docs/security.md).
        log.info(
            "enrollment token issued",
            extra={"token_id": str(token_id), "grant_id": str(grant_id), "ttl_seconds": ttl},
        )
        url = f"{ctx.settings.public_url}{ENROLLMENT_PATH}{token}"
        if ca_fingerprint is not None:
            # A fragment never leaves the client: the pin is not sent to (or logged by) anyone.
            url += f"#ca_fp={ca_fingerprint}"
        return schemas.TokenOut(
            token=token,
            token_id=token_id,
            grant_id=grant_id,
            peer_id=grant.peer_id,
            enrollment_url=url,
            ca_fingerprint_sha256=ca_fingerprint,
            expires_at=expires_at,
            revoked_other_tokens=revoked_others,
        )


# ------------------------------------------------------------------------------ outbound


def connection_out(connection: FederationConnection) -> schemas.ConnectionOut:
    return schemas.ConnectionOut(
        id=connection.id,
        name=connection.name,
        endpoint_url=connection.endpoint_url,
        state=connection.state,
        remote_grant_id=connection.remote_grant_id,
        remote_subject_user_id=connection.remote_subject_user_id,
        cert_serial=connection.cert_serial,
        cert_not_after=connection.cert_not_after,
        ca_fingerprint_sha256=connection.ca_fingerprint_sha256,
        created_at=connection.created_at,
        updated_at=connection.updated_at,
    )


def _public_key_der(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _load_certificates(pem: str, what: str) -> list[x509.Certificate]:
    try:
        certificates = pki.load_pem_chain(pem)
    except ValueError:
        raise BadRequest(f"{what} is not PEM certificates", code="invalid_certificate") from None
    if not certificates:
        raise BadRequest(f"{what} holds no certificate", code="invalid_certificate")
    return certificates


class ConnectionService:
    @staticmethod
    async def create_keypair(ctx: AdminContext, body: schemas.KeypairCreate) -> schemas.KeypairOut:
        async with audited(ctx, "connection.keypair", "connection") as audit:
            key = pki.new_ec_key()
            csr_pem = make_csr(key, body.name)
            # The private key exists in clear only in this process's memory; at rest it is
            # sealed under the gateway secret, bound to its purpose.
            sealed = ctx.settings.secrets.sealer().seal(
                pki.private_key_pem(key), purpose=CONNECTION_KEY_PURPOSE
            )
            connection = await ConnectionRepository(ctx.session).insert(
                body.name, body.endpoint_url, sealed, csr_pem
            )
            if connection is None:
                raise Conflict("a connection with this name exists", code="connection_name_taken")
            audit.note(target_id=str(connection.id))
        log.info("connection key pair created", extra={"connection_id": str(connection.id)})
        return schemas.KeypairOut(
            connection_id=connection.id,
            name=connection.name,
            endpoint_url=connection.endpoint_url,
            state=connection.state,
            csr_pem=csr_pem,
        )

    @staticmethod
    async def attach_certificate(
        ctx: AdminContext, connection_id: uuid.UUID, body: schemas.ConnectionCert
    ) -> schemas.ConnectionOut:
        async with audited(
            ctx, "connection.certificate", "connection", target_id=str(connection_id)
        ) as audit:
            repo = ConnectionRepository(ctx.session)
            connection = await repo.get(connection_id, for_update=True)
            if connection is None:
                raise NotFound("no such connection", code="connection_not_found")
            if connection.state is not ConnectionState.PENDING:
                raise InvalidTransition(
                    f"the connection is {connection.state.value}; a certificate is attached "
                    "only to a pending connection"
                )
            leaves = _load_certificates(body.cert_pem, "cert_pem")
            if len(leaves) != 1:
                raise BadRequest(
                    "cert_pem must hold exactly one certificate", code="invalid_certificate"
                )
            leaf = leaves[0]
            chain = _load_certificates(body.cert_chain_pem, "cert_chain_pem")
            _load_certificates(body.ca_bundle_pem, "ca_bundle_pem")  # parses at all
            # Only the pinned root (and what it issued) is trusted and stored: an extra root in
            # the bundle would otherwise be trusted for chain checks and for every later call.
            pin = body.expected_ca_fingerprint_sha256
            try:
                trusted_bundle = pki.pinned_bundle(body.ca_bundle_pem, pin)
            except pki.PinMismatch:
                raise BadRequest(
                    "the CA bundle does not match the pinned fingerprint",
                    code="ca_fingerprint_mismatch",
                ) from None
            roots = pki.load_pem_chain(trusted_bundle)
            key = pki.load_private_key(
                ctx.settings.secrets.sealer().unseal(
                    connection.sealed_private_key, purpose=CONNECTION_KEY_PURPOSE
                )
            )
            if _public_key_der(leaf.public_key()) != _public_key_der(key.public_key()):
                raise BadRequest(
                    "the certificate is not for this connection's key",
                    code="certificate_key_mismatch",
                )
            try:
                identity = extract_federation_identity(leaf)
            except MalformedFederationIdentity as exc:
                raise BadRequest(
                    f"the certificate's federation identity is invalid: {exc.reason}",
                    code="certificate_identity_invalid",
                ) from None
            audit.note(grant_id=identity.grant_id, subject_user_id=identity.subject_user_id)
            if (
                body.expected_grant_id is not None and body.expected_grant_id != identity.grant_id
            ) or (
                body.expected_subject_user_id is not None
                and body.expected_subject_user_id != identity.subject_user_id
            ):
                raise BadRequest(
                    "the certificate names another grant or subject user",
                    code="certificate_identity_mismatch",
                )
            ca_fingerprint = pin
            leaf_fingerprint = pki.fingerprint_sha256(leaf)
            intermediates = [c for c in chain if pki.fingerprint_sha256(c) != leaf_fingerprint]
            try:
                pki.verify_client_certificate(leaf, intermediates, roots)
            except pki.ChainVerificationError:
                raise BadRequest(
                    "the certificate does not chain to the given CA bundle",
                    code="certificate_chain_invalid",
                ) from None
            await repo.activate(
                connection_id,
                {
                    "cert_pem": pki.cert_pem(leaf),
                    "cert_chain_pem": body.cert_chain_pem,
                    "ca_bundle_pem": trusted_bundle,
                    "ca_fingerprint_sha256": ca_fingerprint,
                    "cert_serial": pki.serial_hex(leaf),
                    "cert_not_after": leaf.not_valid_after_utc,
                    "remote_grant_id": identity.grant_id,
                    "remote_subject_user_id": identity.subject_user_id,
                    "updated_at": utcnow(),
                },
            )
        log.info("connection activated", extra={"connection_id": str(connection_id)})
        activated = await ConnectionRepository(ctx.session).get(connection_id)
        assert activated is not None
        return connection_out(activated)

    @staticmethod
    async def get(session: AsyncSession, connection_id: uuid.UUID) -> schemas.ConnectionOut:
        connection = await ConnectionRepository(session).get(connection_id)
        if connection is None:
            raise NotFound("no such connection", code="connection_not_found")
        return connection_out(connection)

    @staticmethod
    async def page(
        session: AsyncSession, state: ConnectionState | None, limit: int, cursor: str | None
    ) -> schemas.Page[schemas.ConnectionOut]:
        found = await ConnectionRepository(session).page(state, limit, cursor)
        return schemas.Page[schemas.ConnectionOut](
            items=[connection_out(c) for c in found.rows], next_cursor=found.next_cursor
        )

    @staticmethod
    async def renew(ctx: AdminContext, connection_id: uuid.UUID) -> schemas.ConnectionOut:
        """A new certificate from the peer now (grants.renewal); audited like every action."""
        async with audited(
            ctx, "connection.renew", "connection", target_id=str(connection_id)
        ) as audit:
            connection = await renew_connection(ctx.session, ctx.settings, connection_id)
            audit.note(
                grant_id=connection.remote_grant_id,
                subject_user_id=connection.remote_subject_user_id,
            )
        return connection_out(connection)

    @staticmethod
    async def retire(ctx: AdminContext, connection_id: uuid.UUID) -> schemas.ConnectionOut:
        """Stop using a connection for good (docs/admin-api.md): revoked, key wiped. The grant
        at the peer is the peer's to revoke; the certificate expires there on its own."""
        async with audited(
            ctx, "connection.retire", "connection", target_id=str(connection_id)
        ) as audit:
            repo = ConnectionRepository(ctx.session)
            # Locked: a renewal's update waits for this transaction and then matches no row;
            # one that updated first holds the lock until it commits, and its key is wiped.
            connection = await repo.get(connection_id, for_update=True, key_share=True)
            if connection is None:
                raise NotFound("no such connection", code="connection_not_found")
            audit.note(
                grant_id=connection.remote_grant_id,
                subject_user_id=connection.remote_subject_user_id,
            )
            if not await repo.retire_active(connection_id, utcnow()):
                raise InvalidTransition(
                    f"the connection is {connection.state.value}; only an active connection "
                    "can be retired"
                )
            retired = await repo.get(connection_id)
            assert retired is not None  # locked above
        log.info("connection retired", extra={"connection_id": str(connection_id)})
        return connection_out(retired)

    @staticmethod
    async def delete_inactive(ctx: AdminContext, connection_id: uuid.UUID) -> None:
        async with audited(ctx, "connection.delete", "connection", target_id=str(connection_id)):
            repo = ConnectionRepository(ctx.session)
            connection = await repo.get(connection_id, for_update=True)
            if connection is None:
                raise NotFound("no such connection", code="connection_not_found")
            if not await repo.delete_inactive(connection_id):
                raise InvalidTransition(
                    f"the connection is {connection.state.value}; retire it first (only a "
                    "pending or retired connection can be deleted)"
                )


# ------------------------------------------------------------------------------ audit


class AuditService:
    @staticmethod
    async def page(
        session: AsyncSession, filters: AuditFilters, limit: int, cursor: str | None
    ) -> schemas.Page[schemas.AuditOut]:
        rows, next_cursor = await AuditRepository(session).page(filters, limit, cursor)
        return schemas.Page[schemas.AuditOut](
            items=[schemas.AuditOut.model_validate(row, from_attributes=True) for row in rows],
            next_cursor=next_cursor,
        )
