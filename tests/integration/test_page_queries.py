"""The verbs' page queries (verbs.reads.content_page_query) against a real Postgres: read as
branches of visibility merged in id order, they return exactly the rows the plain rule allows —
the subject's personal rows (no team) plus the rows of the visible teams — in id order, page
after page, with filters; and past MAX_TEAM_BRANCHES teams the single-scan form does the same.

The reference is computed in Python from the rows as inserted, not from another query."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from fedcore.scope_evaluator import RowFilter
from verbs import reads
from verbs.reads import ContentFilters

STATUSES = ("todo", "in_progress", "done")


@dataclass(frozen=True)
class Task:
    id: uuid.UUID
    owner: uuid.UUID
    team: uuid.UUID | None
    status: str
    title: str


@dataclass
class World:
    subject: uuid.UUID
    other: uuid.UUID
    teams: list[uuid.UUID]
    tasks: list[Task]


async def _seed(pool: AsyncConnectionPool[AsyncConnection[Any]], team_count: int) -> World:
    """Two users, ``team_count`` teams; tasks of every kind: the subject's personal rows, the
    subject's rows in a team, the other user's rows with and without a team."""
    rng = random.Random(team_count)
    subject, other = uuid.uuid4(), uuid.uuid4()
    teams = [uuid.uuid4() for _ in range(team_count)]
    tasks = []
    for index in range(40 + 12 * team_count):
        owner = subject if rng.random() < 0.5 else other
        team = rng.choice([None, None, *teams]) if teams else None
        title = f"row {index} {'alpha' if index % 3 == 0 else 'beta'}"
        tasks.append(Task(uuid.uuid4(), owner, team, rng.choice(STATUSES), title))
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
                "INSERT INTO tasks (id, owner_user_id, team_id, status, title, body) "
                "VALUES (%s, %s, %s, %s, %s, '')",
                [(t.id, t.owner, t.team, t.status, t.title) for t in tasks],
            )
    return World(subject, other, teams, tasks)


async def _walk(
    pool: AsyncConnectionPool[AsyncConnection[Any]],
    rows: RowFilter,
    filters: ContentFilters,
    search: str | None = None,
) -> list[uuid.UUID]:
    """Every page, following the last id as the verbs' cursor does."""
    seen: list[uuid.UUID] = []
    after: uuid.UUID | None = None
    for _ in range(500):  # more pages than any world has rows: a cursor that does not advance
        async with pool.connection() as conn:
            found = await reads.list_content(conn, "tasks", rows, after, filters, search=search)
        assert len(found) <= rows.limit + 1
        page = found[: rows.limit]
        seen.extend(row["id"] for row in page)
        if len(found) <= rows.limit:
            return seen
        after = page[-1]["id"]
    raise AssertionError(f"the pages never ended: {len(seen)} rows read")


def _expected(
    world: World, personal: bool, teams: frozenset[uuid.UUID], status: str | None = None
) -> list[uuid.UUID]:
    return sorted(
        (
            t.id
            for t in world.tasks
            if ((personal and t.owner == world.subject and t.team is None) or t.team in teams)
            and (status is None or t.status == status)
        ),
        key=lambda row_id: str(row_id),  # Postgres orders uuids bytewise: as their text
    )


@pytest.mark.parametrize(
    ("team_count", "visible_teams", "personal"),
    [
        (0, 0, True),  # personal only: one branch
        (3, 1, False),  # one team: one branch
        (3, 3, False),  # teams only: three branches
        (3, 2, True),  # personal + two teams: three branches, one team not visible
        (reads.MAX_TEAM_BRANCHES + 2, reads.MAX_TEAM_BRANCHES, True),  # the most branches
        (reads.MAX_TEAM_BRANCHES + 2, reads.MAX_TEAM_BRANCHES + 1, True),  # single scan
        (2, 0, False),  # nothing visible
    ],
)
async def test_pages_return_exactly_the_visible_rows_in_id_order(
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
        assert await _walk(raw_pool, rows, ContentFilters()) == _expected(world, personal, teams)
        # A filter applies inside every branch.
        assert await _walk(raw_pool, rows, ContentFilters(status="done")) == _expected(
            world, personal, teams, status="done"
        )


async def test_search_pages_follow_the_same_rule(
    raw_pool: AsyncConnectionPool[AsyncConnection[Any]],
) -> None:
    world = await _seed(raw_pool, 4)
    teams = frozenset(world.teams[:3])
    rows = RowFilter(subject_user_id=world.subject, include_personal=True, team_ids=teams, limit=5)
    found = await _walk(raw_pool, rows, ContentFilters(), search="alpha")
    matching = {t.id for t in world.tasks if "alpha" in t.title}
    assert found == [row_id for row_id in _expected(world, True, teams) if row_id in matching]
    assert found  # the data set has matching rows: the comparison above is not vacuous


def test_the_query_text_has_one_branch_per_visibility_source() -> None:
    def query(personal: bool, teams: int) -> tuple[str, dict[str, Any]]:
        rows = RowFilter(
            subject_user_id=uuid.uuid4(),
            include_personal=personal,
            team_ids=frozenset(uuid.uuid4() for _ in range(teams)),
            limit=5,
        )
        return reads.content_page_query("tasks", rows, None, ContentFilters())

    assert "UNION ALL" not in query(True, 0)[0]
    assert "UNION ALL" not in query(False, 1)[0]
    assert query(True, 2)[0].count("UNION ALL") == 2
    most, params = query(False, reads.MAX_TEAM_BRANCHES)
    assert most.count("UNION ALL") == reads.MAX_TEAM_BRANCHES - 1
    assert len([name for name in params if name.startswith("team_")]) == reads.MAX_TEAM_BRANCHES
    single, params = query(True, reads.MAX_TEAM_BRANCHES + 1)
    assert "UNION ALL" not in single
    assert "team_id = ANY(%(team_ids)s)" in single
    assert len(params["team_ids"]) == reads.MAX_TEAM_BRANCHES + 1
