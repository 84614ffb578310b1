"""The grant scope schema (fedcore.scope.GrantScope) and the gateway's scope rules
(check_scope_policy): tables of valid and invalid scopes, and property tests."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcore.scope import (
    ABSOLUTE_MAX_ROWS,
    RESOURCES,
    GrantScope,
    InvalidScope,
    ScopePolicy,
    check_scope_policy,
    validate_scope,
)

TEAM_A = uuid.UUID("6f9619ff-8b86-4011-b42d-00c04fc964ff")
TEAM_B = uuid.UUID("1b4e28ba-2fa1-41d2-883f-0016d3cca427")
OPEN_POLICY = ScopePolicy(allow_hard_denied=True)


def _problems(data: Any) -> list[tuple[list[str], str]]:
    with pytest.raises(InvalidScope) as info:
        GrantScope.from_json(data)
    assert info.value.code == "invalid_scope"
    assert info.value.status_code == 422
    return [(field["loc"], field["msg"]) for field in info.value.fields()]


VALID: list[tuple[str, dict[str, Any]]] = [
    ("minimal", {"resources": ["tasks"]}),
    ("every resource", {"resources": list(RESOURCES)}),
    (
        "full",
        {
            "resources": ["tasks", "notes"],
            "excluded_resources": ["credentials"],
            "include_teams": [str(TEAM_A), str(TEAM_B)],
            "include_personal": False,
            "max_rows_per_query": 250,
        },
    ),
    ("cap at the lower bound", {"resources": ["notes"], "max_rows_per_query": 1}),
    ("cap at the upper bound", {"resources": ["notes"], "max_rows_per_query": 1000}),
    (
        "uppercase team id is normalised",
        {"resources": ["tasks"], "include_teams": [str(TEAM_A).upper()]},
    ),
]

INVALID: list[tuple[str, Any, list[str]]] = [
    ("not an object", ["tasks"], ["scope"]),
    ("resources missing", {}, ["scope", "resources"]),
    ("resources empty", {"resources": []}, ["scope", "resources"]),
    ("resources not a list", {"resources": "tasks"}, ["scope", "resources"]),
    ("unknown resource", {"resources": ["tasks", "secrets"]}, ["scope", "resources", "1"]),
    ("resource wrong case", {"resources": ["Tasks"]}, ["scope", "resources", "0"]),
    ("duplicate resource", {"resources": ["tasks", "tasks"]}, ["scope", "resources"]),
    ("unknown key", {"resources": ["tasks"], "resource": ["notes"]}, ["scope", "resource"]),
    (
        "unknown excluded resource",
        {"resources": ["tasks"], "excluded_resources": ["passwords"]},
        ["scope", "excluded_resources", "0"],
    ),
    (
        "duplicate excluded resource",
        {"resources": ["tasks"], "excluded_resources": ["notes", "notes"]},
        ["scope", "excluded_resources"],
    ),
    (
        "resource both granted and excluded",
        {"resources": ["tasks", "notes"], "excluded_resources": ["notes"]},
        ["scope", "excluded_resources"],
    ),
    (
        "team id not a UUID",
        {"resources": ["tasks"], "include_teams": ["team-a"]},
        ["scope", "include_teams", "0"],
    ),
    (
        "team id a number",
        {"resources": ["tasks"], "include_teams": [42]},
        ["scope", "include_teams", "0"],
    ),
    (
        "duplicate team (case differs)",
        {"resources": ["tasks"], "include_teams": [str(TEAM_A), str(TEAM_A).upper()]},
        ["scope", "include_teams"],
    ),
    (
        "personal as string",
        {"resources": ["tasks"], "include_personal": "true"},
        ["scope", "include_personal"],
    ),
    (
        "personal as 1",
        {"resources": ["tasks"], "include_personal": 1},
        ["scope", "include_personal"],
    ),
    (
        "cap as string",
        {"resources": ["tasks"], "max_rows_per_query": "100"},
        ["scope", "max_rows_per_query"],
    ),
    (
        "cap as float",
        {"resources": ["tasks"], "max_rows_per_query": 10.0},
        ["scope", "max_rows_per_query"],
    ),
    (
        "cap as bool",
        {"resources": ["tasks"], "max_rows_per_query": True},
        ["scope", "max_rows_per_query"],
    ),
    (
        "cap zero",
        {"resources": ["tasks"], "max_rows_per_query": 0},
        ["scope", "max_rows_per_query"],
    ),
    (
        "cap above 1000",
        {"resources": ["tasks"], "max_rows_per_query": 1001},
        ["scope", "max_rows_per_query"],
    ),
    (
        "cap null",
        {"resources": ["tasks"], "max_rows_per_query": None},
        ["scope", "max_rows_per_query"],
    ),
]


@pytest.mark.parametrize(("case", "data"), VALID, ids=[c for c, _ in VALID])
def test_valid_scopes_are_accepted_and_round_trip(case: str, data: dict[str, Any]) -> None:
    scope = GrantScope.from_json(data)
    stored = scope.to_json()
    assert set(stored) == {
        "resources",
        "excluded_resources",
        "include_teams",
        "include_personal",
        "max_rows_per_query",
    }
    assert GrantScope.from_json(stored) == scope
    assert GrantScope.from_json(json.dumps(stored)) == scope
    assert stored["include_teams"] == [str(uuid.UUID(t)) for t in data.get("include_teams", [])]


@pytest.mark.parametrize(("case", "data", "loc"), INVALID, ids=[c for c, _, _ in INVALID])
def test_invalid_scopes_are_refused_with_the_field_path(
    case: str, data: Any, loc: list[str]
) -> None:
    problems = _problems(data)
    assert loc in [found_loc for found_loc, _ in problems], problems


def test_defaults_are_personal_rows_no_teams_no_exclusions_100_rows() -> None:
    scope = GrantScope.from_json({"resources": ["tasks"]})
    assert scope.include_personal is True
    assert scope.include_teams == []
    assert scope.excluded_resources == []
    assert scope.max_rows_per_query == 100


def test_every_problem_is_reported_at_once_and_the_message_names_each_path() -> None:
    with pytest.raises(InvalidScope) as info:
        GrantScope.from_json({"resources": [], "max_rows_per_query": 0, "extra": 1})
    message = info.value.message
    for path in ("scope.resources", "scope.max_rows_per_query", "scope.extra"):
        assert path in message


def test_messages_never_echo_the_offending_value() -> None:
    marker = "s3cr3t-value-that-must-not-echo"
    with pytest.raises(InvalidScope) as info:
        GrantScope.from_json(
            {
                "resources": [marker],
                "excluded_resources": marker,
                "include_teams": [marker],
                "include_personal": marker,
                "max_rows_per_query": marker,
                "unknown": marker,
            }
        )
    assert len(info.value.problems) == 6
    assert marker not in info.value.message
    assert marker not in json.dumps(info.value.fields())


def test_unknown_keys_are_named_in_the_path_but_sanitised() -> None:
    hostile = "x\n{evil}" + "k" * 100
    locs = [loc for loc, _ in _problems({"resources": ["tasks"], hostile: 1})]
    assert len(locs) == 1
    reported = locs[0][1]
    assert "\n" not in reported
    assert reported.startswith("x?{evil}")
    assert len(reported) == 64


def test_json_text_input_is_strict_too() -> None:
    assert _problems('{"resources": ["tasks"], "max_rows_per_query": "5"}') == [
        (["scope", "max_rows_per_query"], "Input should be a valid integer")
    ]
    assert [loc for loc, _ in _problems("not json")] == [["scope"]]


def test_scope_is_immutable() -> None:
    scope = GrantScope.from_json({"resources": ["tasks"]})
    with pytest.raises(ValueError, match="frozen"):
        scope.max_rows_per_query = 5  # type: ignore[misc]


def test_effective_resources_are_granted_minus_excluded() -> None:
    scope = GrantScope.from_json({"resources": ["tasks", "notes"], "excluded_resources": ["users"]})
    assert scope.effective_resources == frozenset({"tasks", "notes"})


# --------------------------------------------------------------------------- policy (pure)


def _policy_locs(
    scope_data: dict[str, Any], policy: ScopePolicy, teams: set[uuid.UUID]
) -> list[list[str]]:
    scope = GrantScope.from_json(scope_data)
    with pytest.raises(InvalidScope) as info:
        check_scope_policy(scope, policy, teams)
    return [field["loc"] for field in info.value.fields()]


def test_hard_denied_resource_is_refused_by_default() -> None:
    locs = _policy_locs({"resources": ["tasks", "credentials"]}, ScopePolicy(), set())
    assert locs == [["scope", "resources", "1"]]


def test_hard_denied_resource_passes_only_with_the_explicit_setting() -> None:
    scope = GrantScope.from_json({"resources": ["credentials"]})
    check_scope_policy(scope, OPEN_POLICY, set())


def test_excluding_a_hard_denied_resource_is_fine() -> None:
    scope = GrantScope.from_json({"resources": ["tasks"], "excluded_resources": ["credentials"]})
    check_scope_policy(scope, ScopePolicy(), set())


def test_custom_hard_deny_list() -> None:
    policy = ScopePolicy(hard_deny=frozenset({"users"}))
    assert _policy_locs({"resources": ["users"]}, policy, set()) == [["scope", "resources", "0"]]
    check_scope_policy(GrantScope.from_json({"resources": ["credentials"]}), policy, set())


def test_cap_above_the_server_cap_is_refused() -> None:
    policy = ScopePolicy(max_rows_cap=50)
    assert _policy_locs({"resources": ["tasks"], "max_rows_per_query": 51}, policy, set()) == [
        ["scope", "max_rows_per_query"]
    ]
    check_scope_policy(
        GrantScope.from_json({"resources": ["tasks"], "max_rows_per_query": 50}), policy, set()
    )


def test_team_the_user_is_not_in_is_refused_with_its_index() -> None:
    data = {"resources": ["tasks"], "include_teams": [str(TEAM_A), str(TEAM_B)]}
    assert _policy_locs(data, ScopePolicy(), {TEAM_A}) == [["scope", "include_teams", "1"]]
    check_scope_policy(GrantScope.from_json(data), ScopePolicy(), {TEAM_A, TEAM_B})


def test_validate_scope_runs_shape_and_rules() -> None:
    with pytest.raises(InvalidScope):
        validate_scope({"resources": ["credentials"]}, ScopePolicy(), set())
    with pytest.raises(InvalidScope):
        validate_scope({"resources": "tasks"}, OPEN_POLICY, set())
    assert validate_scope({"resources": ["tasks"]}, ScopePolicy(), set()).resources == ["tasks"]


# --------------------------------------------------------------------------- properties

RESOURCE = st.sampled_from(RESOURCES)
TEAM_IDS = st.lists(st.uuids(), max_size=6, unique=True)


@st.composite
def valid_scopes(draw: st.DrawFn) -> dict[str, Any]:
    resources = draw(st.lists(RESOURCE, min_size=1, unique=True))
    remaining = [r for r in RESOURCES if r not in resources]
    excluded = draw(st.lists(st.sampled_from(remaining), unique=True)) if remaining else []
    data: dict[str, Any] = {"resources": resources}
    mention_excluded = draw(st.booleans())
    if excluded or mention_excluded:
        data["excluded_resources"] = excluded
    if draw(st.booleans()):
        data["include_teams"] = [str(t) for t in draw(TEAM_IDS)]
    if draw(st.booleans()):
        data["include_personal"] = draw(st.booleans())
    if draw(st.booleans()):
        data["max_rows_per_query"] = draw(st.integers(1, ABSOLUTE_MAX_ROWS))
    return data


@given(valid_scopes())
def test_property_every_well_formed_scope_validates_and_round_trips(data: dict[str, Any]) -> None:
    scope = GrantScope.from_json(data)
    assert scope.resources == data["resources"]
    assert GrantScope.from_json(scope.to_json()) == scope
    assert scope.effective_resources == frozenset(data["resources"])


@given(
    valid_scopes(),
    st.text(st.characters(codec="utf-8", categories=["L", "N", "P"]), min_size=1, max_size=20),
)
def test_property_any_unknown_key_is_refused(data: dict[str, Any], key: str) -> None:
    if key in GrantScope.model_fields:
        return
    assert ["scope", key] in [loc for loc, _ in _problems({**data, key: 1})]


@given(valid_scopes(), st.text(max_size=12).filter(lambda s: s not in RESOURCES))
def test_property_any_unknown_resource_name_is_refused(data: dict[str, Any], name: str) -> None:
    bad = {**data, "resources": [*data["resources"], name]}
    index = str(len(data["resources"]))
    assert ["scope", "resources", index] in [loc for loc, _ in _problems(bad)]


@given(valid_scopes(), st.integers().filter(lambda n: not 1 <= n <= ABSOLUTE_MAX_ROWS))
def test_property_cap_outside_bounds_is_refused(data: dict[str, Any], cap: int) -> None:
    assert ["scope", "max_rows_per_query"] in [
        loc for loc, _ in _problems({**data, "max_rows_per_query": cap})
    ]


@given(
    valid_scopes(),
    st.sampled_from(["max_rows_per_query", "include_personal", "resources", "include_teams"]),
    st.one_of(
        st.text(max_size=5),
        st.floats(allow_nan=False),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    ),
)
def test_property_wrong_types_are_refused(data: dict[str, Any], field: str, value: Any) -> None:
    assert ["scope", field] in [loc[:2] for loc, _ in _problems({**data, field: value})]


@given(valid_scopes(), st.data())
def test_property_any_duplicate_is_refused(data: dict[str, Any], draw: st.DataObject) -> None:
    field = draw.draw(st.sampled_from(["resources", "include_teams"]))
    values = data.get(field) or ([str(TEAM_A)] if field == "include_teams" else None)
    assert values
    duplicated = [*values, draw.draw(st.sampled_from(values))]
    assert ["scope", field] in [loc for loc, _ in _problems({**data, field: duplicated})]


@given(valid_scopes(), st.integers(1, ABSOLUTE_MAX_ROWS), TEAM_IDS)
def test_property_policy_accepts_exactly_what_the_rules_allow(
    data: dict[str, Any], cap: int, member_teams: list[uuid.UUID]
) -> None:
    scope = GrantScope.from_json(data)
    policy = ScopePolicy(max_rows_cap=cap)
    members = set(member_teams) | ({scope.include_teams[0]} if scope.include_teams else set())
    expected_locs = [
        ["scope", "resources", str(i)] for i, r in enumerate(scope.resources) if r == "credentials"
    ]
    if scope.max_rows_per_query > cap:
        expected_locs.append(["scope", "max_rows_per_query"])
    expected_locs += [
        ["scope", "include_teams", str(i)]
        for i, t in enumerate(scope.include_teams)
        if t not in members
    ]
    if not expected_locs:
        check_scope_policy(scope, policy, members)
        return
    with pytest.raises(InvalidScope) as info:
        check_scope_policy(scope, policy, members)
    assert [field["loc"] for field in info.value.fields()] == expected_locs
