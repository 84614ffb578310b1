"""The verbs' reads, in SQLAlchemy Core (hot path: no ORM objects).

Every row query takes a :class:`~fedcore.scope_evaluator.RowFilter` and applies it in SQL, so a
row outside the scope never leaves the database. Pagination is keyset on ``id``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, and_, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from fedcore.models import (
    Credential,
    FederationCertificate,
    FederationGrant,
    FederationPeer,
    GrantStatus,
    Note,
    PeerState,
    Task,
    Team,
    TeamMember,
    User,
)
from fedcore.scope_evaluator import RowFilter

CERTS = FederationCertificate.__table__
GRANTS = FederationGrant.__table__
PEERS = FederationPeer.__table__
MEMBERS = TeamMember.__table__
TEAMS = Team.__table__
USERS = User.__table__

CONTENT_TABLES: dict[str, Table] = {
    "tasks": Task.__table__,  # type: ignore[dict-item]
    "notes": Note.__table__,  # type: ignore[dict-item]
    "credentials": Credential.__table__,  # type: ignore[dict-item]
}
# Columns a peer may see, per resource (never search_vector or anything added later by default).
CONTENT_COLUMNS: dict[str, tuple[str, ...]] = {
    "tasks": (
        "id",
        "title",
        "body",
        "status",
        "owner_user_id",
        "team_id",
        "created_at",
        "updated_at",
    ),
    "notes": ("id", "title", "body", "owner_user_id", "team_id", "created_at", "updated_at"),
    "credentials": (
        "id",
        "title",
        "body",
        "login",
        "owner_user_id",
        "team_id",
        "created_at",
        "updated_at",
    ),
}


@dataclass(frozen=True)
class CertificateBinding:
    fingerprint_sha256: str
    revoked_at: datetime | None
    cert_peer_id: uuid.UUID
    grant_id: uuid.UUID
    grant_subject_user_id: uuid.UUID
    grant_peer_id: uuid.UUID
    grant_status: GrantStatus
    grant_expires_at: datetime | None
    scope: dict[str, Any]
    peer_state: PeerState
    peer_name: str


async def load_certificate_binding(session: AsyncSession, serial: str) -> CertificateBinding | None:
    """Certificate record + its grant + its peer, in one indexed query."""
    row = (
        await session.execute(
            select(
                CERTS.c.fingerprint_sha256,
                CERTS.c.revoked_at,
                CERTS.c.peer_id,
                GRANTS.c.id,
                GRANTS.c.subject_user_id,
                GRANTS.c.peer_id,
                GRANTS.c.status,
                GRANTS.c.expires_at,
                GRANTS.c.scope,
                PEERS.c.state,
                PEERS.c.name,
            )
            .select_from(
                CERTS.join(GRANTS, GRANTS.c.id == CERTS.c.grant_id).join(
                    PEERS, PEERS.c.id == CERTS.c.peer_id
                )
            )
            .where(CERTS.c.serial == serial)
        )
    ).first()
    if row is None:
        return None
    return CertificateBinding(*row)


async def member_team_ids(session: AsyncSession, user_id: uuid.UUID) -> frozenset[uuid.UUID]:
    result = await session.execute(select(MEMBERS.c.team_id).where(MEMBERS.c.user_id == user_id))
    return frozenset(result.scalars())


@dataclass(frozen=True)
class ContentFilters:
    status: str | None = None
    updated_since: datetime | None = None


def _content_visibility(table: Table, rows: RowFilter) -> ColumnElement[bool]:
    clauses: list[ColumnElement[bool]] = []
    if rows.include_personal:
        clauses.append(
            and_(table.c.owner_user_id == rows.subject_user_id, table.c.team_id.is_(None))
        )
    if rows.team_ids:
        clauses.append(table.c.team_id.in_(sorted(rows.team_ids)))
    return or_(*clauses) if clauses else false()


def _content_select(resource: str) -> tuple[Table, Select[Any]]:
    table = CONTENT_TABLES[resource]
    columns = [table.c[name] for name in CONTENT_COLUMNS[resource]]
    return table, select(*columns)


def _apply_filters(table: Table, query: Select[Any], filters: ContentFilters) -> Select[Any]:
    if filters.status is not None:
        query = query.where(table.c.status == filters.status)
    if filters.updated_since is not None:
        query = query.where(table.c.updated_at >= filters.updated_since)
    return query


async def list_content(
    session: AsyncSession,
    resource: str,
    rows: RowFilter,
    after: uuid.UUID | None,
    filters: ContentFilters,
    search: str | None = None,
) -> list[dict[str, Any]]:
    """Up to ``rows.limit + 1`` visible rows after ``after`` (the extra one says "more")."""
    table, query = _content_select(resource)
    query = _apply_filters(table, query.where(_content_visibility(table, rows)), filters)
    if search is not None:
        query = query.where(table.c.search_vector.op("@@")(func.plainto_tsquery("simple", search)))
    if after is not None:
        query = query.where(table.c.id > after)
    query = query.order_by(table.c.id).limit(rows.limit + 1)
    result = await session.execute(query)
    return [dict(row) for row in result.mappings()]


async def get_content(
    session: AsyncSession, resource: str, rows: RowFilter, row_id: uuid.UUID
) -> dict[str, Any] | None:
    table, query = _content_select(resource)
    query = query.where(table.c.id == row_id).where(_content_visibility(table, rows))
    row = (await session.execute(query)).mappings().first()
    return dict(row) if row is not None else None


def _teams_query(rows: RowFilter) -> Select[Any]:
    return select(TEAMS.c.id, TEAMS.c.name, TEAMS.c.created_at).where(
        TEAMS.c.id.in_(sorted(rows.team_ids)) if rows.team_ids else false()
    )


def _users_query(rows: RowFilter) -> Select[Any]:
    clauses: list[ColumnElement[bool]] = []
    if rows.include_personal:
        clauses.append(USERS.c.id == rows.subject_user_id)
    if rows.team_ids:
        members = select(MEMBERS.c.user_id).where(MEMBERS.c.team_id.in_(sorted(rows.team_ids)))
        clauses.append(USERS.c.id.in_(members))
    return select(USERS.c.id, USERS.c.username, USERS.c.display_name).where(
        or_(*clauses) if clauses else false()
    )


def _directory_query(resource: str, rows: RowFilter) -> tuple[Table, Select[Any]]:
    if resource == "teams":
        return TEAMS, _teams_query(rows)  # type: ignore[return-value]
    return USERS, _users_query(rows)  # type: ignore[return-value]


async def list_directory(
    session: AsyncSession, resource: str, rows: RowFilter, after: uuid.UUID | None
) -> list[dict[str, Any]]:
    table, query = _directory_query(resource, rows)
    if after is not None:
        query = query.where(table.c.id > after)
    result = await session.execute(query.order_by(table.c.id).limit(rows.limit + 1))
    return [dict(row) for row in result.mappings()]


async def get_directory(
    session: AsyncSession, resource: str, rows: RowFilter, row_id: uuid.UUID
) -> dict[str, Any] | None:
    table, query = _directory_query(resource, rows)
    row = (await session.execute(query.where(table.c.id == row_id))).mappings().first()
    return dict(row) if row is not None else None
