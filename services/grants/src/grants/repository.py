"""Queries of the grants service. No domain rules here: the service decides, this module reads
and writes rows.

Lists page with keyset cursors: ``(created_at, id)`` descending for entities, ``id`` descending
for the audit log. A cursor is opaque to clients (base64url of the last row's key).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, delete, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from fedcore.errors import Unprocessable
from fedcore.models import (
    AuditOutcome,
    ConnectionState,
    FederationAuditLog,
    FederationCertificate,
    FederationCircuit,
    FederationConnection,
    FederationEnrollmentToken,
    FederationGrant,
    FederationPeer,
    GrantStatus,
    PeerState,
    Team,
    TeamMember,
    User,
)

LIVE_GRANT_STATUSES = (GrantStatus.PENDING, GrantStatus.ACTIVE)


class InvalidCursor(Unprocessable):
    default_code = "invalid_cursor"


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_text, _, id_text = base64.urlsafe_b64decode(padded).decode().partition("|")
        created_at = datetime.fromisoformat(created_text)
        if created_at.tzinfo is None:
            raise ValueError("naive")
        return created_at, uuid.UUID(id_text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor("cursor is not one this API issued") from None


def _keyset_page(statement: Select[Any], model: Any, limit: int, cursor: str | None) -> Select[Any]:
    if cursor is not None:
        created_at, row_id = decode_cursor(cursor)
        statement = statement.where(tuple_(model.created_at, model.id) < (created_at, row_id))
    return statement.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)


T = TypeVar("T")


@dataclass(frozen=True)
class Slice(Generic[T]):
    rows: list[T]
    next_cursor: str | None


def _slice(rows: Sequence[Any], limit: int) -> Slice[Any]:
    page = list(rows[:limit])
    more = len(rows) > limit
    return Slice(page, encode_cursor(page[-1].created_at, page[-1].id) if more and page else None)


# ------------------------------------------------------------------------------ users, teams


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert(self, username: str, display_name: str) -> User | None:
        """The new user, or ``None`` if the username is taken (no exception, no rollback)."""
        row_id = (
            await self.session.execute(
                insert(User)
                .values(id=uuid.uuid4(), username=username, display_name=display_name)
                .on_conflict_do_nothing(index_elements=[User.username])
                .returning(User.id)
            )
        ).scalar_one_or_none()
        return None if row_id is None else await self.get(row_id)

    async def get(self, user_id: uuid.UUID) -> User | None:
        return (
            await self.session.execute(select(User).where(User.id == user_id))
        ).scalar_one_or_none()

    async def page(self, limit: int, cursor: str | None) -> Slice[User]:
        rows = (await self.session.execute(_keyset_page(select(User), User, limit, cursor))).all()
        return _slice([row[0] for row in rows], limit)

    async def team_ids(self, user_id: uuid.UUID) -> list[uuid.UUID]:
        return list(
            (
                await self.session.execute(
                    select(TeamMember.team_id)
                    .where(TeamMember.user_id == user_id)
                    .order_by(TeamMember.team_id)
                )
            ).scalars()
        )

    async def team_ids_of_many(self, user_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
        result: dict[uuid.UUID, list[Any]] = {user_id: [] for user_id in user_ids}
        if not user_ids:
            return result
        rows = await self.session.execute(
            select(TeamMember.user_id, TeamMember.team_id)
            .where(TeamMember.user_id.in_(list(user_ids)))
            .order_by(TeamMember.team_id)
        )
        for user_id, team_id in rows:
            result[user_id].append(team_id)
        return result


class TeamRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert(self, name: str) -> Team | None:
        row_id = (
            await self.session.execute(
                insert(Team)
                .values(id=uuid.uuid4(), name=name)
                .on_conflict_do_nothing(index_elements=[Team.name])
                .returning(Team.id)
            )
        ).scalar_one_or_none()
        return None if row_id is None else await self.get(row_id)

    async def get(self, team_id: uuid.UUID) -> Team | None:
        return (
            await self.session.execute(select(Team).where(Team.id == team_id))
        ).scalar_one_or_none()

    async def page(self, limit: int, cursor: str | None) -> Slice[Team]:
        rows = (await self.session.execute(_keyset_page(select(Team), Team, limit, cursor))).all()
        return _slice([row[0] for row in rows], limit)

    async def members(self, team_id: uuid.UUID) -> list[TeamMember]:
        return list(
            (
                await self.session.execute(
                    select(TeamMember)
                    .where(TeamMember.team_id == team_id)
                    .order_by(TeamMember.created_at, TeamMember.user_id)
                )
            ).scalars()
        )

    async def member_ids_of_many(
        self, team_ids: Collection[uuid.UUID]
    ) -> dict[uuid.UUID, list[Any]]:
        result: dict[uuid.UUID, list[Any]] = {team_id: [] for team_id in team_ids}
        if not team_ids:
            return result
        rows = await self.session.execute(
            select(TeamMember.team_id, TeamMember.user_id)
            .where(TeamMember.team_id.in_(list(team_ids)))
            .order_by(TeamMember.created_at, TeamMember.user_id)
        )
        for team_id, user_id in rows:
            result[team_id].append(user_id)
        return result

    async def add_member(self, team_id: uuid.UUID, user_id: uuid.UUID) -> TeamMember | None:
        """The new membership, or ``None`` if the user already is a member."""
        inserted = (
            await self.session.execute(
                insert(TeamMember)
                .values(team_id=team_id, user_id=user_id)
                .on_conflict_do_nothing(index_elements=[TeamMember.team_id, TeamMember.user_id])
                .returning(TeamMember.team_id)
            )
        ).scalar_one_or_none()
        if inserted is None:
            return None
        return (
            await self.session.execute(
                select(TeamMember).where(
                    TeamMember.team_id == team_id, TeamMember.user_id == user_id
                )
            )
        ).scalar_one()

    async def teams_of_user_among(
        self, user_id: uuid.UUID, team_ids: Collection[uuid.UUID]
    ) -> set[uuid.UUID]:
        """Which of ``team_ids`` the user is a member of."""
        if not team_ids:
            return set()
        return set(
            (
                await self.session.execute(
                    select(TeamMember.team_id).where(
                        TeamMember.user_id == user_id, TeamMember.team_id.in_(list(team_ids))
                    )
                )
            ).scalars()
        )


# ------------------------------------------------------------------------------ peers


class PeerRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert(self, name: str, endpoint_url: str | None) -> FederationPeer | None:
        row_id = (
            await self.session.execute(
                insert(FederationPeer)
                .values(
                    id=uuid.uuid4(),
                    name=name,
                    endpoint_url=endpoint_url,
                    state=PeerState.PENDING,
                )
                .on_conflict_do_nothing(index_elements=[FederationPeer.name])
                .returning(FederationPeer.id)
            )
        ).scalar_one_or_none()
        return None if row_id is None else await self.get(row_id)

    async def get(self, peer_id: uuid.UUID, *, for_update: bool = False) -> FederationPeer | None:
        statement = select(FederationPeer).where(FederationPeer.id == peer_id)
        if for_update:
            # FOR NO KEY UPDATE: blocks other writers (lock order peer, grant, token, as in
            # enrollment) without blocking the broker's foreign-key checks (FOR KEY SHARE).
            statement = statement.with_for_update(key_share=True)
        return (
            await self.session.execute(statement.execution_options(populate_existing=True))
        ).scalar_one_or_none()

    async def page(self, state: PeerState | None, limit: int, cursor: str | None) -> Slice[Any]:
        statement = select(FederationPeer)
        if state is not None:
            statement = statement.where(FederationPeer.state == state)
        rows = (
            await self.session.execute(_keyset_page(statement, FederationPeer, limit, cursor))
        ).all()
        return _slice([row[0] for row in rows], limit)

    async def set_state(self, peer_id: uuid.UUID, state: PeerState, now: datetime) -> None:
        await self.session.execute(
            update(FederationPeer)
            .where(FederationPeer.id == peer_id)
            .values(state=state, updated_at=now)
        )


# ------------------------------------------------------------------------------ grants, tokens


@dataclass(frozen=True)
class GrantRef:
    id: uuid.UUID
    peer_id: uuid.UUID
    subject_user_id: uuid.UUID


@dataclass(frozen=True)
class GrantFilters:
    peer_id: uuid.UUID | None = None
    status: GrantStatus | None = None
    subject_user_id: uuid.UUID | None = None


class GrantRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert(
        self,
        subject_user_id: uuid.UUID,
        peer_id: uuid.UUID,
        scope: dict[str, Any],
        expires_at: datetime | None,
    ) -> FederationGrant:
        grant = FederationGrant(
            id=uuid.uuid4(),
            subject_user_id=subject_user_id,
            peer_id=peer_id,
            scope=scope,
            status=GrantStatus.PENDING,
            expires_at=expires_at,
        )
        self.session.add(grant)
        await self.session.flush()
        await self.session.refresh(grant)
        return grant

    async def get(self, grant_id: uuid.UUID, *, for_update: bool = False) -> FederationGrant | None:
        statement = select(FederationGrant).where(FederationGrant.id == grant_id)
        if for_update:
            statement = statement.with_for_update(key_share=True)  # see PeerRepository.get
        return (
            await self.session.execute(statement.execution_options(populate_existing=True))
        ).scalar_one_or_none()

    async def page(self, filters: GrantFilters, limit: int, cursor: str | None) -> Slice[Any]:
        statement = select(FederationGrant)
        if filters.peer_id is not None:
            statement = statement.where(FederationGrant.peer_id == filters.peer_id)
        if filters.status is not None:
            statement = statement.where(FederationGrant.status == filters.status)
        if filters.subject_user_id is not None:
            statement = statement.where(FederationGrant.subject_user_id == filters.subject_user_id)
        rows = (
            await self.session.execute(_keyset_page(statement, FederationGrant, limit, cursor))
        ).all()
        return _slice([row[0] for row in rows], limit)

    async def expire_due(
        self, now: datetime, grant_ids: Collection[uuid.UUID] | None = None
    ) -> list[GrantRef]:
        """Persist ``expired`` on live grants whose ``expires_at`` has passed; return them."""
        statement = (
            update(FederationGrant)
            .where(
                FederationGrant.status.in_(LIVE_GRANT_STATUSES),
                FederationGrant.expires_at.is_not(None),
                FederationGrant.expires_at <= now,
            )
            .values(status=GrantStatus.EXPIRED)
            .returning(FederationGrant.id, FederationGrant.peer_id, FederationGrant.subject_user_id)
        )
        if grant_ids is not None:
            statement = statement.where(FederationGrant.id.in_(list(grant_ids)))
        rows = (await self.session.execute(statement)).all()
        return [GrantRef(row[0], row[1], row[2]) for row in rows]

    async def revoke(self, grant_id: uuid.UUID, reason: str | None, now: datetime) -> None:
        await self.session.execute(
            update(FederationGrant)
            .where(FederationGrant.id == grant_id)
            .values(status=GrantStatus.REVOKED, revoked_at=now, revoked_reason=reason)
        )

    async def revoke_live_of_peer(
        self, peer_id: uuid.UUID, reason: str | None, now: datetime
    ) -> list[GrantRef]:
        """Revoke every pending/active grant of a peer; return the grants changed."""
        rows = (
            await self.session.execute(
                update(FederationGrant)
                .where(
                    FederationGrant.peer_id == peer_id,
                    FederationGrant.status.in_(LIVE_GRANT_STATUSES),
                )
                .values(status=GrantStatus.REVOKED, revoked_at=now, revoked_reason=reason)
                .returning(
                    FederationGrant.id, FederationGrant.peer_id, FederationGrant.subject_user_id
                )
            )
        ).all()
        return [GrantRef(row[0], row[1], row[2]) for row in rows]

    async def live_certificate_serials(
        self,
        *,
        grant_ids: Collection[uuid.UUID] | None = None,
        peer_id: uuid.UUID | None = None,
    ) -> list[str]:
        """Serials of unrevoked certificates issued for these grants / to this peer."""
        statement = select(FederationCertificate.serial).where(
            FederationCertificate.revoked_at.is_(None)
        )
        if grant_ids is not None:
            statement = statement.where(FederationCertificate.grant_id.in_(list(grant_ids)))
        if peer_id is not None:
            statement = statement.where(FederationCertificate.peer_id == peer_id)
        return list(
            (await self.session.execute(statement.order_by(FederationCertificate.serial))).scalars()
        )


class EnrollmentTokenRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert(
        self, token_hash: str, grant_id: uuid.UUID, peer_id: uuid.UUID, expires_at: datetime
    ) -> uuid.UUID:
        token_id = uuid.uuid4()
        self.session.add(
            FederationEnrollmentToken(
                id=token_id,
                token_hash=token_hash,
                grant_id=grant_id,
                peer_id=peer_id,
                expires_at=expires_at,
            )
        )
        await self.session.flush()
        return token_id

    async def revoke_unused(self, grant_ids: Collection[uuid.UUID], now: datetime) -> int:
        """Revoke tokens of these grants that are neither used nor revoked; return how many."""
        if not grant_ids:
            return 0
        rows = (
            await self.session.execute(
                update(FederationEnrollmentToken)
                .where(
                    FederationEnrollmentToken.grant_id.in_(list(grant_ids)),
                    FederationEnrollmentToken.used_at.is_(None),
                    FederationEnrollmentToken.revoked_at.is_(None),
                )
                .values(revoked_at=now)
                .returning(FederationEnrollmentToken.id)
            )
        ).all()
        return len(rows)


# ------------------------------------------------------------------------------ connections


class ConnectionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert(
        self, name: str, endpoint_url: str, sealed_private_key: bytes, csr_pem: str
    ) -> FederationConnection | None:
        row_id = (
            await self.session.execute(
                insert(FederationConnection)
                .values(
                    id=uuid.uuid4(),
                    name=name,
                    endpoint_url=endpoint_url,
                    state=ConnectionState.PENDING,
                    sealed_private_key=sealed_private_key,
                    csr_pem=csr_pem,
                )
                .on_conflict_do_nothing(index_elements=[FederationConnection.name])
                .returning(FederationConnection.id)
            )
        ).scalar_one_or_none()
        return None if row_id is None else await self.get(row_id)

    async def get(
        self, connection_id: uuid.UUID, *, for_update: bool = False, key_share: bool = False
    ) -> FederationConnection | None:
        """``key_share``: ``FOR NO KEY UPDATE`` (the row changes, its id stays), which does not
        block the verbs' circuit rows referencing it."""
        statement = select(FederationConnection).where(FederationConnection.id == connection_id)
        if for_update:
            statement = statement.with_for_update(key_share=key_share)
        return (
            await self.session.execute(statement.execution_options(populate_existing=True))
        ).scalar_one_or_none()

    async def page(
        self, state: ConnectionState | None, limit: int, cursor: str | None
    ) -> Slice[Any]:
        statement = select(FederationConnection)
        if state is not None:
            statement = statement.where(FederationConnection.state == state)
        rows = (
            await self.session.execute(_keyset_page(statement, FederationConnection, limit, cursor))
        ).all()
        return _slice([row[0] for row in rows], limit)

    async def activate(self, connection_id: uuid.UUID, values: dict[str, Any]) -> None:
        await self.session.execute(
            update(FederationConnection)
            .where(
                FederationConnection.id == connection_id,
                FederationConnection.state == ConnectionState.PENDING,
            )
            .values(state=ConnectionState.ACTIVE, **values)
        )

    async def retire_active(self, connection_id: uuid.UUID, now: datetime) -> bool:
        """Active → revoked, for good: the sealed private key is wiped, so nothing on this
        gateway can present the identity again (there is no way back to active: a new
        enrollment makes a new connection), and the circuit's state goes with it."""
        rows = (
            await self.session.execute(
                update(FederationConnection)
                .where(
                    FederationConnection.id == connection_id,
                    FederationConnection.state == ConnectionState.ACTIVE,
                )
                .values(state=ConnectionState.REVOKED, sealed_private_key=b"", updated_at=now)
                .returning(FederationConnection.id)
            )
        ).all()
        if rows:
            await self.session.execute(
                delete(FederationCircuit).where(FederationCircuit.connection_id == connection_id)
            )
        return bool(rows)

    async def delete_inactive(self, connection_id: uuid.UUID) -> bool:
        """A pending (abandoned) or revoked (retired) connection; an active one is retired
        first, so its key is never removed while a call could be using it."""
        rows = (
            await self.session.execute(
                delete(FederationConnection)
                .where(
                    FederationConnection.id == connection_id,
                    FederationConnection.state.in_(
                        [ConnectionState.PENDING, ConnectionState.REVOKED]
                    ),
                )
                .returning(FederationConnection.id)
            )
        ).all()
        return bool(rows)


# ------------------------------------------------------------------------------ audit


@dataclass(frozen=True)
class AuditFilters:
    grant_id: uuid.UUID | None = None
    peer_id: uuid.UUID | None = None
    outcome: AuditOutcome | None = None
    action: str | None = None
    since: datetime | None = None


def decode_audit_cursor(cursor: str) -> int:
    if not cursor.isdigit() or len(cursor) > 19:
        raise InvalidCursor("cursor is not one this API issued")
    return int(cursor)


class AuditRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def page(
        self, filters: AuditFilters, limit: int, cursor: str | None
    ) -> tuple[list[FederationAuditLog], str | None]:
        statement = select(FederationAuditLog)
        if filters.grant_id is not None:
            statement = statement.where(FederationAuditLog.grant_id == filters.grant_id)
        if filters.peer_id is not None:
            statement = statement.where(FederationAuditLog.peer_id == filters.peer_id)
        if filters.outcome is not None:
            statement = statement.where(FederationAuditLog.outcome == filters.outcome)
        if filters.action is not None:
            statement = statement.where(FederationAuditLog.action == filters.action)
        if filters.since is not None:
            statement = statement.where(FederationAuditLog.created_at >= filters.since)
        if cursor is not None:
            statement = statement.where(FederationAuditLog.id < decode_audit_cursor(cursor))
        rows = list(
            (
                await self.session.execute(
                    statement.order_by(FederationAuditLog.id.desc()).limit(limit + 1)
                )
            ).scalars()
        )
        page = rows[:limit]
        next_cursor = str(page[-1].id) if len(rows) > limit and page else None
        return page, next_cursor
