"""A realistic data set, fast: users, teams, memberships, ≥ 10k rows per content resource,
peers/grants/certificates in every state and a filled audit log, written with COPY.

The bench's subject user ("u00") is in three teams; its grants include two of them plus its
personal rows, so a 50-row list page is always full and a search for ``SEARCH_WORD`` matches
hundreds of visible rows. Everything is deterministic for a given ``seed``.
"""

from __future__ import annotations

import json
import random
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

SEARCH_WORD = "alpha"
CONTENT = ("tasks", "notes", "credentials")
WORDS = [
    "report",
    "budget",
    "roadmap",
    "sprint",
    "review",
    "deploy",
    "incident",
    "backlog",
    "design",
    "meeting",
    "invoice",
    "audit",
    "release",
    "customer",
    "vendor",
    "migration",
    "schema",
    "index",
    "query",
    "cache",
    "latency",
    "quota",
    "contract",
    "policy",
    "training",
    "hiring",
    "onboarding",
    "travel",
    "expense",
    "laptop",
    "printer",
    "network",
    "firewall",
    "certificate",
    "renewal",
    "backup",
    "restore",
    "archive",
    "dashboard",
    "metric",
    "alert",
    "pager",
    "rota",
    "holiday",
    "summary",
    "draft",
]


@dataclass
class BenchWorld:
    users: list[uuid.UUID] = field(default_factory=list)
    teams: list[uuid.UUID] = field(default_factory=list)
    memberships: dict[uuid.UUID, list[uuid.UUID]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    audit_rows: int = 0
    extra_grants: int = 0

    @property
    def subject(self) -> uuid.UUID:
        return self.users[0]

    @property
    def subject_scope_teams(self) -> list[uuid.UUID]:
        """Two of the subject's three teams: the third stays outside every bench scope."""
        return self.memberships[self.subject][:2]


def conninfo(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _copy(
    conn: psycopg.Connection[Any], table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    count = 0
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def _sentence(rng: random.Random, n: int, with_word: bool) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    if with_word:
        words.insert(rng.randrange(len(words) + 1), SEARCH_WORD)
    return " ".join(words)


def seed(
    database_url: str,
    *,
    users: int = 60,
    teams: int = 12,
    rows_per_resource: int = 20_000,
    extra_grants: int = 300,
    audit_rows: int = 100_000,
    seed: int = 8,
) -> tuple[BenchWorld, float]:
    """Insert the data set; returns it and the seconds it took."""
    rng = random.Random(seed)
    started = time.perf_counter()
    world = BenchWorld()
    tag = secrets.token_hex(3)
    now = datetime.now(UTC)
    world.users = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(users)]
    world.teams = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(teams)]
    for i, user in enumerate(world.users):
        count = 3 if i == 0 else rng.choice((1, 2, 2, 3))
        world.memberships[user] = rng.sample(world.teams, count)

    with psycopg.connect(conninfo(database_url)) as conn:
        _copy(
            conn,
            "users",
            ("id", "username", "display_name"),
            ((u, f"bench-{tag}-u{i:02d}", f"Bench User {i}") for i, u in enumerate(world.users)),
        )
        _copy(
            conn,
            "teams",
            ("id", "name"),
            ((t, f"bench-{tag}-team{i:02d}") for i, t in enumerate(world.teams)),
        )
        _copy(
            conn,
            "team_members",
            ("team_id", "user_id"),
            ((t, u) for u, ts in world.memberships.items() for t in ts),
        )
        statuses = ("todo", "in_progress", "done")
        for resource in CONTENT:
            columns = [
                "id",
                "title",
                "body",
                "owner_user_id",
                "team_id",
                "created_at",
                "updated_at",
            ]
            if resource == "tasks":
                columns.append("status")
            if resource == "credentials":
                columns.append("login")

            def rows(resource: str = resource) -> Iterable[list[Any]]:
                for n in range(rows_per_resource):
                    # The subject owns a larger share than average (an active user).
                    owner = world.subject if rng.random() < 0.05 else rng.choice(world.users)
                    team = None if rng.random() < 0.35 else rng.choice(world.memberships[owner])
                    created = now - timedelta(seconds=rng.randrange(365 * 86_400))
                    row: list[Any] = [
                        uuid.UUID(int=rng.getrandbits(128), version=4),
                        f"{resource[:-1]} {n} {_sentence(rng, 3, False)}",
                        _sentence(rng, rng.randrange(8, 40), rng.random() < 0.25),
                        owner,
                        team,
                        created,
                        created + timedelta(seconds=rng.randrange(30 * 86_400)),
                    ]
                    if resource == "tasks":
                        row.append(statuses[n % 3])
                    if resource == "credentials":
                        row.append(f"login-{n}")
                    yield row

            world.rows[resource] = _copy(conn, resource, columns, rows())

        # Other peers and their grants, in every state, with recorded certificates.
        peer_rows, grant_rows, cert_rows = [], [], []
        for i in range(extra_grants):
            peer_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            grant_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            subject = rng.choice(world.users)
            state, status = rng.choice(
                (("active", "active"), ("active", "active"), ("pending", "pending"),
                 ("suspended", "active"), ("revoked", "revoked"))
            )  # fmt: skip
            peer_rows.append((peer_id, f"bench-{tag}-peer{i:03d}", state))
            scope = {
                "resources": ["tasks", "notes"],
                "excluded_resources": [],
                "include_teams": [str(t) for t in world.memberships[subject][:1]],
                "include_personal": True,
                "max_rows_per_query": 100,
            }
            grant_rows.append((grant_id, subject, peer_id, json.dumps(scope), status))
            if status != "pending":
                cert_rows.append(
                    (
                        uuid.UUID(int=rng.getrandbits(128), version=4),
                        secrets.token_hex(16),
                        grant_id,
                        peer_id,
                        secrets.token_hex(32),
                        f"bench-{tag}-peer{i:03d}",
                        "local",
                        now - timedelta(hours=1),
                        now + timedelta(hours=23),
                        now if status == "revoked" else None,
                    )
                )
        _copy(conn, "federation_peers", ("id", "name", "state"), peer_rows)
        _copy(
            conn,
            "federation_grants",
            ("id", "subject_user_id", "peer_id", "scope", "status"),
            grant_rows,
        )
        _copy(
            conn,
            "federation_certificates",
            (
                "id",
                "serial",
                "grant_id",
                "peer_id",
                "fingerprint_sha256",
                "subject_cn",
                "backend",
                "not_before",
                "not_after",
                "revoked_at",
            ),
            cert_rows,
        )
        world.extra_grants = len(grant_rows)

        def audit() -> Iterable[tuple[Any, ...]]:
            for _ in range(audit_rows):
                _, subject, peer_id, _, _ = rng.choice(grant_rows)
                grant_id = rng.choice(grant_rows)[0]
                allowed = rng.random() < 0.9
                yield (
                    now - timedelta(seconds=rng.randrange(30 * 86_400)),
                    secrets.token_hex(8),
                    "peer",
                    str(peer_id),
                    rng.choice(("verb.list", "verb.get", "verb.search", "verb.capabilities")),
                    "tasks",
                    grant_id,
                    peer_id,
                    subject,
                    "allowed" if allowed else "denied",
                    None if allowed else "resource_not_in_scope",
                    rng.randrange(51) if allowed else None,
                )

        world.audit_rows = _copy(
            conn,
            "federation_audit_log",
            (
                "created_at",
                "request_id",
                "actor_type",
                "actor_id",
                "action",
                "resource",
                "grant_id",
                "peer_id",
                "subject_user_id",
                "outcome",
                "reason_code",
                "row_count",
            ),
            audit(),
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE")
    return world, time.perf_counter() - started
