"""The inbound verbs' statements, as SQL on a raw psycopg connection (the hot path).

Every verb call sends at most three statements, each one round trip on an autocommit
connection: the certificate binding (certificate + grant + peer + the subject's teams), the rows,
and the audit row (``fedcore.audit.insert_audit``). ``list`` and ``search`` of content send two:
their row query inserts the request's audit row itself (a data-modifying CTE, so the rows read
and their audit row commit together, and neither without the other).

SQLAlchemy's execution layer cost 0.3-1 ms of CPU per statement here, several times the
statement itself (docs/performance.md); raw psycopg with server-side binding and its automatic
prepared statements costs what the bare endpoint costs. Values are always bound parameters;
only the fixed column lists and clause texts below are put together into the statements.

Every row query applies a :class:`~fedcore.scope_evaluator.RowFilter` in SQL, so a row outside
the scope never leaves the database. Pagination is keyset on ``id``.

Autocommit is safe: these are reads, each at READ COMMITTED (as inside a transaction), and the
audit row is committed by its statement before the response is sent.

The local query API (the outbound side) reads its own rows and the fan-out's connections here
too: a fan-out's latency is this process's CPU.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row, namedtuple_row

from fedcore.audit import audit_insert_sql
from fedcore.models import GrantStatus, PeerState
from fedcore.scope import GrantScope, InvalidScope
from fedcore.scope_evaluator import RowFilter

Connection = AsyncConnection[Any]

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
    peer_state: PeerState
    peer_name: str
    # The grant's subject user's teams, read in the same statement (the scope rule needs them).
    subject_team_ids: frozenset[uuid.UUID]
    # The grant's stored scope, validated once when read (None: it no longer validates), so a
    # cached binding is not re-validated on every request.
    grant_scope: GrantScope | None


# The statement's columns in the order it selects them: the binding's fields, with the stored
# scope that becomes ``grant_scope``.
_BINDING_COLUMNS = (
    "fingerprint_sha256",
    "revoked_at",
    "cert_peer_id",
    "grant_id",
    "grant_subject_user_id",
    "grant_peer_id",
    "grant_status",
    "grant_expires_at",
    "scope",
    "peer_state",
    "peer_name",
    "subject_team_ids",
)

_BINDING_SQL = """
SELECT c.fingerprint_sha256, c.revoked_at, c.peer_id,
       g.id, g.subject_user_id, g.peer_id, g.status, g.expires_at, g.scope,
       p.state, p.name,
       (SELECT array_agg(m.team_id) FROM team_members m WHERE m.user_id = g.subject_user_id)
  FROM federation_certificates c
  JOIN federation_grants g ON g.id = c.grant_id
  JOIN federation_peers p ON p.id = c.peer_id
 WHERE c.serial = %(serial)s
"""


async def load_certificate_binding(conn: Connection, serial: str) -> CertificateBinding | None:
    """Certificate record + its grant + its peer + the subject's teams, in one indexed query.

    The trust path may keep it in ``verbs.binding_cache`` (emptied on every change, see there).
    """
    async with conn.cursor() as cur:
        await cur.execute(_BINDING_SQL, {"serial": serial})
        row = await cur.fetchone()
    if row is None:
        return None
    columns: dict[str, Any] = dict(zip(_BINDING_COLUMNS, row, strict=True))
    columns["grant_status"] = GrantStatus(columns["grant_status"])
    columns["peer_state"] = PeerState(columns["peer_state"])
    columns["subject_team_ids"] = frozenset(columns["subject_team_ids"] or ())  # NULL: no teams
    # The raw scope is not kept: only its validated form is used (and cached).
    stored_scope = columns.pop("scope")
    grant_scope: GrantScope | None = None
    if isinstance(stored_scope, dict):  # a JSON string stored by hand is not a scope either
        try:
            grant_scope = GrantScope.from_json(stored_scope)
        except InvalidScope:
            grant_scope = None
    return CertificateBinding(**columns, grant_scope=grant_scope)


# The fan-out's connections: what a call and its circuit need (fedcore.federation_client's
# ConnectionMaterial, verbs.circuit's CircuitRecord) and the database's clock (the circuits'
# times are the database's). Through SQLAlchemy this read cost ~0.6 ms of CPU, in series before
# every fan-out's first call.
_ACTIVE_CONNECTIONS_SQL = """
SELECT c.id, c.name, c.state, c.endpoint_url, c.cert_pem, c.cert_chain_pem, c.ca_bundle_pem,
       c.sealed_private_key, c.cert_serial,
       f.consecutive_failures AS circuit_failures,
       f.last_failure_code AS circuit_last_failure_code,
       f.opened_at AS circuit_opened_at,
       f.probe_started_at AS circuit_probe_started_at,
       now() AS db_now
  FROM federation_connections c
  LEFT JOIN federation_circuits f ON f.connection_id = c.id
 WHERE c.state = 'active'
 ORDER BY c.name
"""


async def active_connections(conn: Connection) -> list[Any]:
    """Every active outbound connection with its circuit, by name (the fan-out's merge order);
    rows with attribute access."""
    async with conn.cursor(row_factory=namedtuple_row) as cur:
        await cur.execute(_ACTIVE_CONNECTIONS_SQL)
        return await cur.fetchall()


async def member_team_ids(conn: Connection, user_id: uuid.UUID) -> frozenset[uuid.UUID]:
    """The user's teams now (the local query's native permission rule)."""
    async with conn.cursor() as cur:
        await cur.execute("SELECT team_id FROM team_members WHERE user_id = %(user_id)s",
                          {"user_id": user_id})  # fmt: skip
        return frozenset(row[0] for row in await cur.fetchall())


@dataclass(frozen=True)
class ContentFilters:
    status: str | None = None
    updated_since: datetime | None = None


_PERSONAL = "(owner_user_id = %(subject_user_id)s AND team_id IS NULL)"


def _visibility(personal: bool, teams: bool) -> str:
    clauses = []
    if personal:
        clauses.append(_PERSONAL)
    if teams:
        clauses.append("team_id = ANY(%(team_ids)s)")
    return "(" + " OR ".join(clauses) + ")" if clauses else "false"


def _visibility_params(rows: RowFilter) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if rows.include_personal:
        params["subject_user_id"] = rows.subject_user_id
    if rows.team_ids:
        params["team_ids"] = sorted(rows.team_ids)
    return params


# A page is read as disjoint branches of visibility — the subject's personal rows, then each
# visible team's rows — each an index range already in id order (ix_<table>_owner_user_id_id,
# ix_<table>_team_id_id), merged by Postgres (Merge Append) and cut at the limit. Every branch
# stops after the rows the page needs, so a page costs about its own size in row visits. One
# scan of the whole table in id order, filtering on visibility, visits rows / (visible share):
# ~4.6x the page at the bench's 16 % (list: 235 -> 68 buffer hits, Postgres' execution 4x
# shorter), and the whole table for a subject who sees little.
#
# The single scan (``team_id = ANY(...)``) stays for
# * search: every branch would repeat the full-text index lookup (the peer picks the term; a
#   rare one cost ~20x with 16 branches, review of this change);
# * more than MAX_TEAM_BRANCHES teams: planning and plan memory grow with the branches.
# The team count is rounded up to a power of two (the extra branches are ``team_id = NULL``,
# which matches nothing), so a resource has few shapes: few prepared statements per connection.
MAX_TEAM_BRANCHES = 8
ANY_TEAMS = -1  # a shape's team count when the single-scan form is used

# A query's shape: which optional clauses it has, how many team branches. Values are always
# bound parameters, so the text of one shape is the same on every call (psycopg prepares it
# after a few executions).
_ListShape = tuple[str, bool, int, bool, bool, bool, bool]


def _team_branches(rows: RowFilter, search: bool) -> int:
    """How many team branches a page query has (0, 1, 2, 4, 8), or ANY_TEAMS."""
    count = len(rows.team_ids)
    if count == 0:
        return 0
    if search or count > MAX_TEAM_BRANCHES:
        return ANY_TEAMS
    return 1 << (count - 1).bit_length()


def _branch_params(rows: RowFilter, branches: int) -> dict[str, Any]:
    """The visibility parameters of a page query with ``branches`` team branches."""
    params: dict[str, Any] = {}
    if rows.include_personal:
        params["subject_user_id"] = rows.subject_user_id
    teams = sorted(set(rows.team_ids))  # distinct: branches must not overlap
    if branches == ANY_TEAMS:
        params["team_ids"] = teams
    else:
        if branches < len(teams):  # a team without a branch would vanish from the page
            raise ValueError("fewer team branches than teams")
        slots: list[uuid.UUID | None] = [*teams, *[None] * (branches - len(teams))]
        # The extra slots are NULL: team_id = NULL matches no row.
        params.update({f"team_{index}": team for index, team in enumerate(slots)})
    return params


@functools.cache
def _list_sql(shape: _ListShape) -> str:
    resource, personal, teams, status, updated_since, search, after = shape
    conditions = []
    if status:
        conditions.append("status = %(status)s")
    if updated_since:
        conditions.append("updated_at >= %(updated_since)s")
    if search:
        conditions.append("search_vector @@ plainto_tsquery('simple', %(search)s)")
    if after:
        conditions.append("id > %(after)s")
    columns = ", ".join(CONTENT_COLUMNS[resource])

    def page(visible: str) -> str:
        where = " AND ".join([visible, *conditions])
        return (
            f"SELECT {columns} FROM {resource} WHERE {where} "  # noqa: S608 - fixed texts
            "ORDER BY id LIMIT %(row_limit)s"
        )

    if teams == ANY_TEAMS:
        return page(_visibility(personal, True))
    branches = [_PERSONAL] if personal else []
    branches += [f"team_id = %(team_{index})s" for index in range(teams)]
    if len(branches) <= 1:
        return page(branches[0] if branches else "false")
    merged = " UNION ALL ".join(f"({page(branch)})" for branch in branches)
    return f"SELECT * FROM ({merged}) AS visible ORDER BY id LIMIT %(row_limit)s"  # noqa: S608


# The audited form of a page query: the page, and one audit row whose row count is the page's
# size (the query reads one row more than the page to learn whether there are more).
AUDIT_PREFIX = "audit_"
_PAGE_SIZE = f"(SELECT LEAST(count(*), %({AUDIT_PREFIX}page_size)s) FROM page)"  # noqa: S608
_PAGE_AUDIT = audit_insert_sql(AUDIT_PREFIX, row_count_sql=_PAGE_SIZE)


@functools.cache
def _audited_page_sql(page_sql: str) -> str:
    return f"WITH page AS ({page_sql}), audit AS ({_PAGE_AUDIT}) SELECT * FROM page ORDER BY id"  # noqa: S608


@functools.cache
def _get_sql(resource: str, personal: bool, teams: bool) -> str:
    columns = ", ".join(CONTENT_COLUMNS[resource])
    visible = _visibility(personal, teams)
    return f"SELECT {columns} FROM {resource} WHERE id = %(row_id)s AND {visible}"  # noqa: S608


async def _dicts(conn: Connection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)  # built from fixed texts only
        return await cur.fetchall()


def content_page_query(
    resource: str,
    rows: RowFilter,
    after: uuid.UUID | None,
    filters: ContentFilters,
    search: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The text and parameters of a page of up to ``rows.limit + 1`` visible rows after
    ``after`` (the extra one says "more"). Also what the bench's bare endpoint sends."""
    if resource not in CONTENT_COLUMNS:  # the table name is part of the text: known names only
        raise ValueError(f"not a content resource: {resource!r}")
    branches = _team_branches(rows, search is not None)
    sql = _list_sql(
        (
            resource,
            rows.include_personal,
            branches,
            filters.status is not None,
            filters.updated_since is not None,
            search is not None,
            after is not None,
        )
    )
    params = _branch_params(rows, branches)
    params["row_limit"] = rows.limit + 1
    optional = {
        "status": filters.status,
        "updated_since": filters.updated_since,
        "search": search,
        "after": after,
    }
    params.update({name: value for name, value in optional.items() if value is not None})
    return sql, params


async def list_content(
    conn: Connection,
    resource: str,
    rows: RowFilter,
    after: uuid.UUID | None,
    filters: ContentFilters,
    search: str | None = None,
    audit: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Up to ``rows.limit + 1`` visible rows after ``after`` (the extra one says "more").

    With ``audit`` (``fedcore.audit.audit_values(event, AUDIT_PREFIX)``) the same statement
    inserts the request's audit row, its row count the page's size (at most ``rows.limit``)."""
    sql, params = content_page_query(resource, rows, after, filters, search)
    if audit is not None:
        sql = _audited_page_sql(sql)
        params.update(audit)
        params[AUDIT_PREFIX + "page_size"] = rows.limit
    return await _dicts(conn, sql, params)


def content_get_query(
    resource: str, rows: RowFilter, row_id: uuid.UUID
) -> tuple[str, dict[str, Any]]:
    """The text and parameters reading one visible row. Also what the bench's bare endpoint
    sends."""
    if resource not in CONTENT_COLUMNS:
        raise ValueError(f"not a content resource: {resource!r}")
    params = _visibility_params(rows)
    params["row_id"] = row_id
    return _get_sql(resource, rows.include_personal, bool(rows.team_ids)), params


async def get_content(
    conn: Connection, resource: str, rows: RowFilter, row_id: uuid.UUID
) -> dict[str, Any] | None:
    found = await _dicts(conn, *content_get_query(resource, rows, row_id))
    return found[0] if found else None


# The directory: teams are visible when the scope covers them; users when they are the subject
# (personal rows) or members of a visible team.
_TEAMS_SQL = "SELECT id, name, created_at FROM teams WHERE id = ANY(%(team_ids)s)"
_USERS_COLUMNS = "SELECT id, username, display_name FROM users WHERE "
_USERS_PERSONAL = "id = %(subject_user_id)s"
_USERS_TEAMS = "id IN (SELECT user_id FROM team_members WHERE team_id = ANY(%(team_ids)s))"


def _directory_sql(resource: str, rows: RowFilter) -> str | None:
    """The directory query's text, or None when the scope lets no row through."""
    if resource == "teams":
        return _TEAMS_SQL if rows.team_ids else None
    if resource != "users":
        raise ValueError(f"not a directory resource: {resource!r}")
    clauses = []
    if rows.include_personal:
        clauses.append(_USERS_PERSONAL)
    if rows.team_ids:
        clauses.append(_USERS_TEAMS)
    return _USERS_COLUMNS + "(" + " OR ".join(clauses) + ")" if clauses else None


async def list_directory(
    conn: Connection, resource: str, rows: RowFilter, after: uuid.UUID | None
) -> list[dict[str, Any]]:
    sql = _directory_sql(resource, rows)
    if sql is None:
        return []
    params = _visibility_params(rows)
    params["row_limit"] = rows.limit + 1
    if after is not None:
        sql += " AND id > %(after)s"
        params["after"] = after
    return await _dicts(conn, sql + " ORDER BY id LIMIT %(row_limit)s", params)


async def get_directory(
    conn: Connection, resource: str, rows: RowFilter, row_id: uuid.UUID
) -> dict[str, Any] | None:
    sql = _directory_sql(resource, rows)
    if sql is None:
        return None
    params = _visibility_params(rows)
    params["row_id"] = row_id
    found = await _dicts(conn, sql + " AND id = %(row_id)s", params)
    return found[0] if found else None
