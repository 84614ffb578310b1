"""Sample data whose shape makes the scope rules visible (``mosaic dev seed``; also the tests').

Three users, three teams, and for every content resource rows in each visibility class:

    alice  (the subject user a grant is usually for)   teams: research, ops
    bob                                                  teams: research, finance
    carol                                                teams: finance

    class              owner  team       visible to a grant for alice with
    personal           alice  —          include_personal
    research-own       alice  research   "research" in include_teams
    research-other     bob    research   "research" in include_teams
    ops                alice  ops        "ops" in include_teams
    finance            bob    finance    never (alice is not in finance)
    bob-personal       bob    —          never
    carol-personal     carol  —          never

Every title carries its class as a word, so a search or list shows at a glance which classes
leaked. Names get a prefix so repeated seeds (and parallel tests) never collide.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from fedcore.models import Credential, Note, Task, TaskStatus, Team, TeamMember, User

ROWS_PER_CLASS = {
    "personal": 3,
    "research-own": 2,
    "research-other": 2,
    "ops": 1,
    "finance": 2,
    "bob-personal": 2,
    "carol-personal": 1,
}


@dataclass
class SeededWorld:
    users: dict[str, uuid.UUID] = field(default_factory=dict)
    teams: dict[str, uuid.UUID] = field(default_factory=dict)
    # resource -> class -> row ids
    rows: dict[str, dict[str, list[uuid.UUID]]] = field(default_factory=dict)

    def ids(self, resource: str, *classes: str) -> set[uuid.UUID]:
        return {i for c in classes for i in self.rows[resource][c]}


def _class_owner_team(world: SeededWorld, cls: str) -> tuple[uuid.UUID, uuid.UUID | None]:
    return {
        "personal": (world.users["alice"], None),
        "research-own": (world.users["alice"], world.teams["research"]),
        "research-other": (world.users["bob"], world.teams["research"]),
        "ops": (world.users["alice"], world.teams["ops"]),
        "finance": (world.users["bob"], world.teams["finance"]),
        "bob-personal": (world.users["bob"], None),
        "carol-personal": (world.users["carol"], None),
    }[cls]


async def seed(session: AsyncSession, prefix: str = "", rows_scale: int = 1) -> SeededWorld:
    """Insert the world (flushes, does not commit). ``rows_scale`` multiplies every class."""
    world = SeededWorld()
    for name in ("alice", "bob", "carol"):
        user = User(id=uuid.uuid4(), username=f"{prefix}{name}", display_name=name.title())
        session.add(user)
        world.users[name] = user.id
    for name in ("research", "ops", "finance"):
        new_team = Team(id=uuid.uuid4(), name=f"{prefix}{name}")
        session.add(new_team)
        world.teams[name] = new_team.id
    await session.flush()
    for team, members in {
        "research": ("alice", "bob"),
        "ops": ("alice",),
        "finance": ("bob", "carol"),
    }.items():
        for member in members:
            session.add(TeamMember(team_id=world.teams[team], user_id=world.users[member]))
    statuses = list(TaskStatus)
    for resource, model in (("tasks", Task), ("notes", Note), ("credentials", Credential)):
        world.rows[resource] = {}
        for cls, count in ROWS_PER_CLASS.items():
            owner, team_id = _class_owner_team(world, cls)
            ids = []
            for n in range(count * rows_scale):
                row_id = uuid.uuid4()
                values: dict[str, object] = {
                    "id": row_id,
                    "owner_user_id": owner,
                    "team_id": team_id,
                    "title": f"{resource[:-1]} {cls} {n}",
                    "body": f"sample {cls} body for {resource} number {n}",
                }
                if model is Task:
                    values["status"] = statuses[n % len(statuses)]
                if model is Credential:
                    values["login"] = f"{cls}-login-{n}"
                session.add(model(**values))
                ids.append(row_id)
            world.rows[resource][cls] = ids
    await session.flush()
    return world
