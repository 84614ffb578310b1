"""The scope evaluator (DESIGN §5, steps 7-9): pure decisions, no I/O.

Given a grant's :class:`~fedcore.scope.GrantScope`, the operator's :class:`ScopePolicy` and the
subject user's *current* team memberships (looked up by the caller on every request, so leaving a
team takes effect at once), it decides:

1. may the peer name this resource at all → an :class:`Allowed` filter or a :class:`Denied`
   reason (``resource_not_in_scope`` with a detail for the audit row);
2. which rows: native permissions (own rows, rows of the user's teams) ∩ scope:
   - personal rows = owned by the subject user **and in no team** (``include_personal``);
   - team rows = rows of teams in ``include_teams`` **that the user still belongs to**.
   A row the user owns but filed under a team outside the scope is *not* personal: returning
   it would leak that team's data;
3. how many: ``min(requested, scope.max_rows_per_query, server cap)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from fedcore.scope import RESOURCES, GrantScope, ScopePolicy

CONTENT_RESOURCES: Final = frozenset({"tasks", "notes", "credentials"})
DIRECTORY_RESOURCES: Final = frozenset({"teams", "users"})


@dataclass(frozen=True)
class RowFilter:
    """Rows of a resource the peer may see."""

    subject_user_id: uuid.UUID
    include_personal: bool
    team_ids: frozenset[uuid.UUID]
    limit: int

    @property
    def sees_nothing(self) -> bool:
        return not self.include_personal and not self.team_ids


@dataclass(frozen=True)
class Allowed:
    resource: str
    rows: RowFilter


@dataclass(frozen=True)
class Denied:
    code: str  # the error code the peer sees
    detail: str  # why, for the audit row (not_granted, excluded, hard_denied, unknown)


def known_resource(resource: str) -> bool:
    return resource in RESOURCES


def effective_resources(scope: GrantScope, policy: ScopePolicy) -> list[str]:
    """What capabilities advertises: granted - excluded - hard-denied, in a stable order."""
    allowed = scope.effective_resources
    return [r for r in RESOURCES if r in allowed and not policy.denied(r)]


def effective_row_cap(scope: GrantScope, policy: ScopePolicy) -> int:
    return max(1, min(scope.max_rows_per_query, policy.max_rows_cap))


def evaluate(
    scope: GrantScope,
    policy: ScopePolicy,
    resource: str,
    subject_user_id: uuid.UUID,
    member_team_ids: Collection[uuid.UUID],
    requested_limit: int | None,
) -> Allowed | Denied:
    if not known_resource(resource):
        return Denied("unknown_resource", "unknown")
    if policy.denied(resource):
        return Denied("resource_not_in_scope", "hard_denied")
    if resource in scope.excluded_resources:
        return Denied("resource_not_in_scope", "excluded")
    if resource not in scope.resources:
        return Denied("resource_not_in_scope", "not_granted")
    cap = effective_row_cap(scope, policy)
    limit = cap if requested_limit is None else max(1, min(requested_limit, cap))
    teams = frozenset(scope.include_teams) & frozenset(member_team_ids)
    return Allowed(
        resource,
        RowFilter(
            subject_user_id=subject_user_id,
            include_personal=scope.include_personal,
            team_ids=teams,
            limit=limit,
        ),
    )
