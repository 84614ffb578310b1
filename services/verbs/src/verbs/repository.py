"""The verbs' reads, in SQLAlchemy Core (hot path: no ORM objects).

Every row query takes a :class:`~fedcore.scope_evaluator.RowFilter` and applies it in SQL, so a
row outside the scope never leaves the database. Pagination is keyset on ``id``.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    and_,
    bindparam,
    false,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from fedcore.models import (
    ConnectionState,
    Credential,
    FederationCertificate,
    FederationConnection,
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
    # The grant's subject user's teams, read in the same statement (the scope rule needs them).
    subject_team_ids: frozenset[uuid.UUID]


# Built once: executing a prepared construct skips statement building and cache-key work.
_SUBJECT_TEAMS = (
    select(func.array_agg(MEMBERS.c.team_id))
    .where(MEMBERS.c.user_id == GRANTS.c.subject_user_id)
    .correlate(GRANTS)
    .scalar_subquery()
)
_BINDING = (
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
        _SUBJECT_TEAMS,
    )
    .select_from(
        CERTS.join(GRANTS, GRANTS.c.id == CERTS.c.grant_id).join(
            PEERS, PEERS.c.id == CERTS.c.peer_id
        )
    )
    .where(CERTS.c.serial == bindparam("serial"))
)
_MEMBER_TEAMS = select(MEMBERS.c.team_id).where(MEMBERS.c.user_id == bindparam("user_id"))
# session.info key: the memberships the binding read fetched for this request's session.
_TEAMS_READ = "verbs.subject_team_ids"


async def load_certificate_binding(session: AsyncSession, serial: str) -> CertificateBinding | None:
    """Certificate record + its grant + its peer + the subject's teams, in one indexed query.

    Fresh on every request (no cache): revocation, suspension and leaving a team take effect on
    the next call. The teams are kept on this request's session for :func:`member_team_ids`.
    """
    row = (await session.execute(_BINDING, {"serial": serial})).first()
    if row is None:
        return None
    values: list[Any] = list(row)
    values[-1] = frozenset(values[-1] or ())  # array_agg over no rows is NULL
    binding = CertificateBinding(*values)
    session.info[_TEAMS_READ] = (binding.grant_subject_user_id, binding.subject_team_ids)
    return binding


async def member_team_ids(session: AsyncSession, user_id: uuid.UUID) -> frozenset[uuid.UUID]:
    """The user's teams: as read with the certificate binding in this same request (one round
    trip fewer), else from the database."""
    read = session.info.get(_TEAMS_READ)
    if read is not None and read[0] == user_id:
        teams: frozenset[uuid.UUID] = read[1]
        return teams
    result = await session.execute(_MEMBER_TEAMS, {"user_id": user_id})
    return frozenset(result.scalars())


@dataclass(frozen=True)
class ContentFilters:
    status: str | None = None
    updated_since: datetime | None = None


def _content_visibility(table: Table, personal: bool, teams: bool) -> ColumnElement[bool]:
    clauses: list[ColumnElement[bool]] = []
    if personal:
        clauses.append(
            and_(table.c.owner_user_id == bindparam("subject_user_id"), table.c.team_id.is_(None))
        )
    if teams:
        clauses.append(table.c.team_id.in_(bindparam("team_ids", expanding=True)))
    return or_(*clauses) if clauses else false()


def _visibility_params(rows: RowFilter) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if rows.include_personal:
        params["subject_user_id"] = rows.subject_user_id
    if rows.team_ids:
        params["team_ids"] = sorted(rows.team_ids)
    return params


def _content_select(resource: str) -> tuple[Table, Select[Any]]:
    table = CONTENT_TABLES[resource]
    columns = [table.c[name] for name in CONTENT_COLUMNS[resource]]
    return table, select(*columns)


# A query's shape: which optional clauses it has. Values are always bound parameters, so one
# construct per shape is built once and reused (no statement building per request).
_ListShape = tuple[str, bool, bool, bool, bool, bool, bool]


@functools.cache
def _list_query(shape: _ListShape) -> Select[Any]:
    resource, personal, teams, status, updated_since, search, after = shape
    table, query = _content_select(resource)
    query = query.where(_content_visibility(table, personal, teams))
    if status:
        query = query.where(table.c.status == bindparam("status"))
    if updated_since:
        query = query.where(table.c.updated_at >= bindparam("updated_since"))
    if search:
        query = query.where(
            table.c.search_vector.op("@@")(func.plainto_tsquery("simple", bindparam("search")))
        )
    if after:
        query = query.where(table.c.id > bindparam("after"))
    return query.order_by(table.c.id).limit(bindparam("row_limit"))


@functools.cache
def _get_query(resource: str, personal: bool, teams: bool) -> Select[Any]:
    table, query = _content_select(resource)
    return query.where(table.c.id == bindparam("row_id")).where(
        _content_visibility(table, personal, teams)
    )


def _dicts(result: Any) -> list[dict[str, Any]]:
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


async def list_content(
    session: AsyncSession,
    resource: str,
    rows: RowFilter,
    after: uuid.UUID | None,
    filters: ContentFilters,
    search: str | None = None,
) -> list[dict[str, Any]]:
    """Up to ``rows.limit + 1`` visible rows after ``after`` (the extra one says "more")."""
    query = _list_query(
        (
            resource,
            rows.include_personal,
            bool(rows.team_ids),
            filters.status is not None,
            filters.updated_since is not None,
            search is not None,
            after is not None,
        )
    )
    params = _visibility_params(rows)
    params["row_limit"] = rows.limit + 1
    optional = {
        "status": filters.status,
        "updated_since": filters.updated_since,
        "search": search,
        "after": after,
    }
    params.update({name: value for name, value in optional.items() if value is not None})
    return _dicts(await session.execute(query, params))


async def get_content(
    session: AsyncSession, resource: str, rows: RowFilter, row_id: uuid.UUID
) -> dict[str, Any] | None:
    query = _get_query(resource, rows.include_personal, bool(rows.team_ids))
    params = _visibility_params(rows)
    params["row_id"] = row_id
    found = _dicts(await session.execute(query, params))
    return found[0] if found else None


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


# ------------------------------------------------------------------------------ outbound side

CONNECTIONS = FederationConnection.__table__


async def user_exists(session: AsyncSession, user_id: uuid.UUID) -> bool:
    return (
        await session.execute(select(USERS.c.id).where(USERS.c.id == user_id))
    ).first() is not None


async def active_connections(session: AsyncSession) -> list[Any]:
    """Every active outbound connection, by name (the fan-out's merge order)."""
    result = await session.execute(
        select(CONNECTIONS)
        .where(CONNECTIONS.c.state == ConnectionState.ACTIVE)
        .order_by(CONNECTIONS.c.name)
    )
    return list(result.all())


async def connection_by_name(session: AsyncSession, name: str) -> Any | None:
    result = await session.execute(select(CONNECTIONS).where(CONNECTIONS.c.name == name))
    return result.first()


# ------------------------------------------------------------------------------ renewal


async def lock_grant(session: AsyncSession, grant_id: uuid.UUID) -> None:
    """Serialise renewals of one grant (count, then sign) until this transaction ends.

    ``FOR NO KEY UPDATE``: the broker's certificate insert takes ``FOR KEY SHARE`` on the grant
    (foreign key) in its own transaction while this one waits for it; ``FOR UPDATE`` would
    deadlock the two until the statement timeout."""
    await session.execute(
        select(GRANTS.c.id).where(GRANTS.c.id == grant_id).with_for_update(key_share=True)
    )


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
