"""The verbs' page queries (verbs.reads.content_page_query) against a real Postgres: read as
branches of visibility merged in id order, they return exactly the rows the plain rule allows —
the subject's personal rows (no team) plus the rows of the visible teams — in id order, page
after page, with every filter, audited or not; past MAX_TEAM_BRANCHES teams and for search the
single-scan form does the same.

The reference is computed in Python from the rows as inserted, not from another query."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from fedcore.audit import AuditEvent, audit_values
from fedcore.models import ActorType, AuditOutcome
from fedcore.scope_evaluator import RowFilter
from verbs import reads
from verbs.reads import ContentFilters

STATUSES = ("todo", "in_progress", "done")
SINCE = datetime(2026, 6, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    id: uuid.UUID
    owner: uuid.UUID
    team: uuid.UUID | None
    status: str
    title: str
    updated_at: datetime


@dataclass
class World:
    subject: uuid.UUID
    other: uuid.UUID
    teams: list[uuid.UUID]
    rows: dict[str, list[Row]]  # per resource


async def _seed(pool: AsyncConnectionPool[AsyncConnection[Any]], team_count: int) -> World:
    """Two users, ``team_count`` teams; tasks and notes of every kind: the subject's personal
    rows, the subject's rows in a team, the other user's rows with and without a team."""
    rng = random.Random(team_count)
    subject, other = uuid.uuid4(), uuid.uuid4()
    teams = [uuid.uuid4() for _ in range(team_count)]
    world = World(subject, other, teams, {"tasks": [], "notes": []})
    for resource, rows in world.rows.items():
        for index in range(40 + 12 * team_count):
            rows.append(
                Row(
                    id=uuid.uuid4(),
                    owner=subject if rng.random() < 0.5 else other,
                    team=rng.choice([None, None, *teams]) if teams else None,
                    status=rng.choice(STATUSES),
                    title=f"{resource} {index} {'alpha' if index % 3 == 0 else 'beta'}",
                    updated_at=SINCE + timedelta(days=rng.randint(-60, 60)),
                )
            )
    async with pool.connection() as conn:
        for user in (subject, other):
            await conn.execute(
                "INSERT INTO users (id, username, display_name) VALUES (%s, %s, %s)",
                (user, f"u-{user.hex[:12]}", "user"),
            )
        for team in teams:
            await conn.execute(
                "INSERT INTO teams (id, name) VALUES (%s, %s)", (team, f"t-{team.hex[:12]}")
            )
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO tasks (id, owner_user_id, team_id, status, title, body, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, '', %s)",
                [
                    (r.id, r.owner, r.team, r.status, r.title, r.updated_at)
                    for r in world.rows["tasks"]
                ],
            )
            await cur.executemany(
                "INSERT INTO notes (id, owner_user_id, team_id, title, body, updated_at) "
                "VALUES (%s, %s, %s, %s, '', %s)",
                [(r.id, r.owner, r.team, r.title, r.updated_at) for r in world.rows["notes"]],
            )
    return world


async def _walk(
    pool: AsyncConnectionPool[AsyncConnection[Any]],
    rows: RowFilter,
    filters: ContentFilters,
    search: str | None = None,
    resource: str = "tasks",
    audited: bool = False,
) -> list[uuid.UUID]:
    """Every page, following the last id as the verbs' cursor does. ``audited``: in the verbs'
    form (one audit row per page, its row count the page's size)."""
    seen: list[uuid.UUID] = []
    after: uuid.UUID | None = None
    for _ in range(500):  # more pages than any world has rows: a cursor that does not advance
        marker = uuid.uuid4()
        event = AuditEvent(ActorType.PEER, "verb.list", AuditOutcome.ALLOWED, target_id=str(marker))
        audit = audit_values(event, reads.AUDIT_PREFIX) if audited else None
        async with pool.connection() as conn:
            found = await reads.list_content(
                conn, resource, rows, after, filters, search=search, audit=audit
            )
            counts = await (
                await conn.execute(
                    "SELECT row_count FROM federation_audit_log WHERE target_id = %s",
                    (str(marker),),
                )
            ).fetchall()
        assert len(found) <= rows.limit + 1
        page = found[: rows.limit]
        assert counts == ([(len(page),)] if audited else [])
        seen.extend(row["id"] for row in page)
        if len(found) <= rows.limit:
            return seen
        after = page[-1]["id"]
    raise AssertionError(f"the pages never ended: {len(seen)} rows read")


def _expected(
    world: World,
    personal: bool,
    teams: frozenset[uuid.UUID],
    *,
    resource: str = "tasks",
    status: str | None = None,
    since: datetime | None = None,
    word: str | None = None,
) -> list[uuid.UUID]:
    return sorted(
        (
            r.id
            for r in world.rows[resource]
            if ((personal and r.owner == world.subject and r.team is None) or r.team in teams)
            and (status is None or r.status == status)
            and (since is None or r.updated_at >= since)
            and (word is None or word in r.title.split())
        ),
        key=lambda row_id: str(row_id),  # Postgres orders uuids bytewise: as their text
    )


MANY = reads.MAX_TEAM_BRANCHES + 2
SHAPES = [
    (0, 0, True),  # personal only: one branch
    (3, 1, False),  # one team: one branch
    (3, 3, False),  # teams only: four branches (one of them NULL)
    (3, 2, True),  # personal + two teams; one team not visible
    (MANY, reads.MAX_TEAM_BRANCHES, True),  # the most branches
    (MANY, reads.MAX_TEAM_BRANCHES, False),
    (MANY, reads.MAX_TEAM_BRANCHES + 1, True),  # the single scan
    (MANY, reads.MAX_TEAM_BRANCHES + 1, False),
    (2, 0, False),  # nothing visible
]


@pytest.mark.parametrize(("team_count", "visible_teams", "personal"), SHAPES)
async def test_pages_and_searches_return_exactly_the_visible_rows_in_id_order(
    raw_pool: AsyncConnectionPool[AsyncConnection[Any]],
    team_count: int,
    visible_teams: int,
    personal: bool,
) -> None:
    world = await _seed(raw_pool, team_count)
    teams = frozenset(world.teams[:visible_teams])
    for limit in (1, 7, 50):
        rows = RowFilter(
            subject_user_id=world.subject, include_personal=personal, team_ids=teams, limit=limit
        )
        expected = _expected(world, personal, teams)
        assert await _walk(raw_pool, rows, ContentFilters()) == expected
        assert await _walk(raw_pool, rows, ContentFilters(), audited=True) == expected
        # Every filter applies inside every branch.
        assert await _walk(raw_pool, rows, ContentFilters(status="done")) == _expected(
            world, personal, teams, status="done"
        )
        assert await _walk(raw_pool, rows, ContentFilters(updated_since=SINCE)) == _expected(
            world, personal, teams, since=SINCE
        )
        assert await _walk(raw_pool, rows, ContentFilters(), resource="notes") == _expected(
            world, personal, teams, resource="notes"
        )
    # Search (the single-scan form, audited as the verbs send it) follows the same rule.
    rows = RowFilter(
        subject_user_id=world.subject, include_personal=personal, team_ids=teams, limit=5
    )
    found = await _walk(raw_pool, rows, ContentFilters(), search="alpha", audited=True)
    assert found == _expected(world, personal, teams, word="alpha")
    if personal or teams:
        assert found  # the data set has matching rows: the comparison above is not vacuous


def test_the_query_text_has_one_branch_per_visibility_source() -> None:
    def query(personal: bool, teams: int, search: str | None = None) -> tuple[str, dict[str, Any]]:
        rows = RowFilter(
            subject_user_id=uuid.uuid4(),
            include_personal=personal,
            team_ids=frozenset(uuid.uuid4() for _ in range(teams)),
            limit=5,
        )
        return reads.content_page_query("tasks", rows, None, ContentFilters(), search=search)

    assert "UNION ALL" not in query(True, 0)[0]
    assert "UNION ALL" not in query(False, 1)[0]
    assert query(True, 2)[0].count("UNION ALL") == 2
    # Three teams: four branches, the fourth matches nothing (a NULL team).
    three, params = query(False, 3)
    assert three.count("UNION ALL") == 3
    assert [name for name, value in params.items() if value is None] == ["team_3"]
    most, params = query(False, reads.MAX_TEAM_BRANCHES)
    assert most.count("UNION ALL") == reads.MAX_TEAM_BRANCHES - 1
    assert len([name for name in params if name.startswith("team_")]) == reads.MAX_TEAM_BRANCHES
    single, params = query(True, reads.MAX_TEAM_BRANCHES + 1)
    assert "UNION ALL" not in single
    assert "team_id = ANY(%(team_ids)s)" in single
    assert len(params["team_ids"]) == reads.MAX_TEAM_BRANCHES + 1
    # Search: one scan whatever the teams (each branch would repeat the full-text lookup).
    searched, params = query(True, 2, search="x")
    assert "UNION ALL" not in searched
    assert "team_id = ANY(%(team_ids)s)" in searched
