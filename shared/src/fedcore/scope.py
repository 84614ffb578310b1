"""The grant scope: what a peer may read of the subject user's data.

A scope is stored as JSONB on ``federation_grants.scope`` and has exactly this shape::

    {
      "resources":          ["tasks", "notes"],   # non-empty, unique, of RESOURCES
      "excluded_resources": ["credentials"],      # unique, of RESOURCES, disjoint from resources
      "include_teams":      ["<team uuid>", ...], # unique; teams the subject user belongs to
      "include_personal":   true,                 # the subject user's own (team-less) rows
      "max_rows_per_query": 100                   # 1 .. ABSOLUTE_MAX_ROWS (and the server cap)
    }

Two layers of checks:

* :class:`GrantScope` — the *shape*: pydantic v2, ``extra="forbid"``, strict types (``"100"`` is
  not a number, ``1`` is not ``true``), uniqueness, subset of :data:`RESOURCES`. Pure; the
  evaluator loads stored scopes with :meth:`GrantScope.from_json`.
* :func:`check_scope_policy` — the gateway's *rules*: the server row cap, the operator's hard-deny
  list (default ``credentials``; only an explicit server setting opens it) and that every
  ``include_teams`` entry is a team of the subject user. Pure too: the grants service looks the
  memberships up and passes them in.

Every failure is :class:`InvalidScope` (``422 invalid_scope``) listing each problem with its field
path (``scope.resources[1]``); messages never echo the offending value.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from fedcore.errors import Unprocessable

Resource = Literal["tasks", "notes", "credentials", "teams", "users"]
RESOURCES: Final[tuple[str, ...]] = get_args(Resource)
ABSOLUTE_MAX_ROWS: Final = 1000
DEFAULT_MAX_ROWS: Final = 100
MAX_INCLUDE_TEAMS: Final = 256
DEFAULT_HARD_DENY: Final[frozenset[str]] = frozenset({"credentials"})

ScopeLoc = tuple[str | int, ...]


def _uuid_text_only(value: object) -> object:
    # Lax UUID parsing would also take 16 raw bytes; a scope names teams by their UUID text.
    if isinstance(value, str | uuid.UUID):
        return value
    raise ValueError("must be a UUID string")


TeamId = Annotated[uuid.UUID, BeforeValidator(_uuid_text_only), Strict(False)]


def _duplicate_positions(values: Iterable[object]) -> list[int]:
    seen: set[object] = set()
    duplicates = []
    for index, value in enumerate(values):
        if value in seen:
            duplicates.append(index)
        seen.add(value)
    return duplicates


def _refuse_duplicates(values: list[Any]) -> list[Any]:
    duplicates = _duplicate_positions(values)
    if duplicates:
        where = ", ".join(str(i) for i in duplicates)
        raise ValueError(f"entries must be unique (duplicate at index {where})")
    return values


class GrantScope(BaseModel):
    """The shape of a grant's scope (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    resources: list[Resource] = Field(min_length=1)
    excluded_resources: list[Resource] = Field(default_factory=list)
    include_teams: list[TeamId] = Field(default_factory=list, max_length=MAX_INCLUDE_TEAMS)
    include_personal: bool = True
    max_rows_per_query: int = Field(default=DEFAULT_MAX_ROWS, ge=1, le=ABSOLUTE_MAX_ROWS)

    @field_validator("resources", "include_teams")
    @classmethod
    def _unique(cls, values: list[Any]) -> list[Any]:
        return _refuse_duplicates(values)

    @field_validator("excluded_resources")
    @classmethod
    def _unique_and_disjoint(cls, values: list[str], info: ValidationInfo) -> list[str]:
        _refuse_duplicates(values)
        granted = info.data.get("resources")
        if granted is not None:
            overlap = [i for i, resource in enumerate(values) if resource in granted]
            if overlap:
                # "Grant X but exclude X" has no single reading; refuse it instead of guessing.
                where = ", ".join(str(i) for i in overlap)
                raise ValueError(f"a resource cannot be both granted and excluded (index {where})")
        return values

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str | bytes) -> GrantScope:
        """Validate a scope given as parsed JSON (a mapping) or as JSON text.

        Raises :class:`InvalidScope` (never a bare ``ValidationError``).
        """
        try:
            if isinstance(data, str | bytes):
                return cls.model_validate_json(data)
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidScope.from_validation_error(exc) from None

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON form (what is stored in ``federation_grants.scope``)."""
        return self.model_dump(mode="json")

    @property
    def effective_resources(self) -> frozenset[str]:
        """Resources a peer may name: granted minus excluded (before the hard-deny list)."""
        return frozenset(self.resources) - frozenset(self.excluded_resources)


@dataclass(frozen=True)
class ScopeProblem:
    loc: ScopeLoc
    msg: str

    @property
    def path(self) -> str:
        text = "scope"
        for part in self.loc:
            text += f"[{part}]" if isinstance(part, int) else f".{part}"
        return text

    def as_field(self) -> dict[str, Any]:
        return {"loc": ["scope", *(str(part) for part in self.loc)], "msg": self.msg}


def _safe_key(key: str) -> str:
    # An unknown key is part of the path we report; keep it printable and short so a hostile
    # key cannot inject lines into a terminal or a log.
    printable = "".join(ch if ch.isprintable() else "?" for ch in key)
    return printable if len(printable) <= 64 else printable[:61] + "..."


class InvalidScope(Unprocessable):
    """A scope broke the schema or a gateway rule (``422 invalid_scope``).

    ``problems`` lists every failure with its path; :meth:`fields` renders them the way the
    request-validation envelope does (``{"loc": [...], "msg": ...}``).
    """

    default_code = "invalid_scope"

    def __init__(self, problems: list[ScopeProblem]) -> None:
        if not problems:
            raise ValueError("InvalidScope needs at least one problem")
        summary = "; ".join(f"{p.path}: {p.msg}" for p in problems)
        super().__init__(f"scope is invalid: {summary}")
        self.problems = problems

    def fields(self) -> list[dict[str, Any]]:
        return [problem.as_field() for problem in self.problems]

    def details(self) -> dict[str, Any]:
        return {"fields": self.fields()}

    @classmethod
    def from_validation_error(cls, exc: ValidationError) -> InvalidScope:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            loc = tuple(
                _safe_key(part) if isinstance(part, str) else part
                for part in err.get("loc", ())
                if isinstance(part, str | int)
            )
            message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(ScopeProblem(loc=loc, msg=message))
        return cls(problems)


@dataclass(frozen=True)
class ScopePolicy:
    """The operator's rules for scopes on this gateway (from the grants service's settings)."""

    max_rows_cap: int = ABSOLUTE_MAX_ROWS
    hard_deny: frozenset[str] = field(default_factory=lambda: DEFAULT_HARD_DENY)
    allow_hard_denied: bool = False

    def denied(self, resource: str) -> bool:
        return resource in self.hard_deny and not self.allow_hard_denied


def check_scope_policy(
    scope: GrantScope, policy: ScopePolicy, member_team_ids: Collection[uuid.UUID]
) -> None:
    """Apply the gateway's rules to a well-formed scope; raise :class:`InvalidScope` listing
    every broken rule.

    ``member_team_ids`` are the teams the grant's subject user belongs to.
    """
    problems: list[ScopeProblem] = []
    for index, resource in enumerate(scope.resources):
        if policy.denied(resource):
            # Stops an admin (or a stolen admin token) from exporting e.g. credentials to a
            # peer unless the operator opened it explicitly in the server settings.
            problems.append(
                ScopeProblem(
                    ("resources", index),
                    f"'{resource}' is on the operator's hard-deny list and cannot be granted",
                )
            )
    if scope.max_rows_per_query > policy.max_rows_cap:
        problems.append(
            ScopeProblem(
                ("max_rows_per_query",),
                f"must be at most {policy.max_rows_cap} (this gateway's row cap)",
            )
        )
    members = set(member_team_ids)
    for index, team_id in enumerate(scope.include_teams):
        if team_id not in members:
            # Closes the reference system's "tenancy validation" finding: a grant cannot name a
            # team whose rows the subject user could not read themselves.
            problems.append(
                ScopeProblem(("include_teams", index), "is not a team the subject user belongs to")
            )
    if problems:
        raise InvalidScope(problems)


def validate_scope(
    data: Mapping[str, Any],
    policy: ScopePolicy,
    member_team_ids: Collection[uuid.UUID],
) -> GrantScope:
    """Shape and rules together: what the grants service runs on a new grant's scope."""
    scope = GrantScope.from_json(data)
    check_scope_policy(scope, policy, member_team_ids)
    return scope
