"""Local users, teams and memberships (/api/admin/users, /api/admin/teams): the minimum a fresh
gateway needs to have a grant subject without a host application."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.integration.grants.harness import Harness, assert_error


async def test_user_create_list_show(harness: Harness) -> None:
    alice = await harness.ok(
        "POST", "/api/admin/users", 201, json={"username": "alice", "display_name": "Alice A."}
    )
    assert (alice["username"], alice["display_name"], alice["team_ids"]) == (
        "alice",
        "Alice A.",
        [],
    )
    row = harness.db.snapshot("users", alice["id"])
    assert (row["username"], row["display_name"]) == ("alice", "Alice A.")
    assert (await harness.ok("GET", f"/api/admin/users/{alice['id']}"))["username"] == "alice"
    await harness.user("bob")
    listed = await harness.ok("GET", "/api/admin/users", params={"limit": 1})
    assert len(listed["items"]) == 1
    rest = await harness.ok("GET", "/api/admin/users", params={"cursor": listed["next_cursor"]})
    assert {listed["items"][0]["username"], rest["items"][0]["username"]} == {"alice", "bob"}
    assert rest["next_cursor"] is None
    [audit] = [r for r in harness.db.audit() if r["target_id"] == alice["id"]]
    assert (audit["action"], audit["subject_user_id"]) == ("user.create", uuid.UUID(alice["id"]))


async def test_duplicate_username_is_409(harness: Harness) -> None:
    await harness.user("alice")
    response = await harness.call("POST", "/api/admin/users", json={"username": "alice"})
    assert_error(response, 409, "username_taken")
    assert harness.db.count("users") == 1


@pytest.mark.parametrize(
    "body",
    [
        {"username": ""},
        {"username": "has space"},
        {"username": "a" * 65},
        {"username": "ok", "admin": True},
    ],
)
async def test_invalid_user_bodies_are_422(harness: Harness, body: dict[str, Any]) -> None:
    assert_error(await harness.call("POST", "/api/admin/users", json=body), 422, "validation_error")
    assert harness.db.count("users") == 0


async def test_unknown_user_is_404(harness: Harness) -> None:
    response = await harness.call("GET", f"/api/admin/users/{uuid.uuid4()}")
    assert_error(response, 404, "user_not_found")


async def test_team_membership_shows_on_both_sides(harness: Harness) -> None:
    alice = await harness.user("alice")
    team = await harness.team("ops")
    added = await harness.ok(
        "POST", f"/api/admin/teams/{team['id']}/members", 201, json={"user_id": alice["id"]}
    )
    assert (added["team_id"], added["user_id"]) == (team["id"], alice["id"])
    assert (await harness.ok("GET", f"/api/admin/users/{alice['id']}"))["team_ids"] == [team["id"]]
    assert (await harness.ok("GET", f"/api/admin/teams/{team['id']}"))["member_ids"] == [
        alice["id"]
    ]
    members = await harness.ok("GET", f"/api/admin/teams/{team['id']}/members")
    assert [m["user_id"] for m in members] == [alice["id"]]
    listed = await harness.ok("GET", "/api/admin/teams")
    assert listed["items"][0]["member_ids"] == [alice["id"]]


async def test_membership_refusals_change_nothing(harness: Harness) -> None:
    alice = await harness.user("alice")
    team = await harness.team("ops")
    await harness.member(team["id"], alice["id"])
    members_url = f"/api/admin/teams/{team['id']}/members"
    again = await harness.call("POST", members_url, json={"user_id": alice["id"]})
    assert_error(again, 409, "already_member")
    nobody = await harness.call("POST", members_url, json={"user_id": str(uuid.uuid4())})
    assert_error(nobody, 404, "user_not_found")
    no_team = await harness.call(
        "POST", f"/api/admin/teams/{uuid.uuid4()}/members", json={"user_id": alice["id"]}
    )
    assert_error(no_team, 404, "team_not_found")
    assert harness.db.count("team_members") == 1
    denied = [r["reason_code"] for r in harness.db.audit() if r["outcome"] == "denied"]
    assert denied == ["already_member", "user_not_found", "team_not_found"]


async def test_duplicate_team_and_unknown_team(harness: Harness) -> None:
    await harness.team("ops")
    assert_error(
        await harness.call("POST", "/api/admin/teams", json={"name": "ops"}), 409, "team_name_taken"
    )
    assert harness.db.count("teams") == 1
    assert_error(
        await harness.call("GET", f"/api/admin/teams/{uuid.uuid4()}"), 404, "team_not_found"
    )
    assert_error(
        await harness.call("GET", f"/api/admin/teams/{uuid.uuid4()}/members"), 404, "team_not_found"
    )
