"""The grant status machine through the admin API: pending -> active (enrollment, simulated
here as enrollment does it) -> revoked, pending -> revoked, -> expired computed from expires_at;
every illegal transition is 409 invalid_transition with the row unchanged and the refusal
audited."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.grants.harness import Harness, assert_error

GRANTS = "/api/admin/federation/grants"


def activate(harness: Harness, grant: dict[str, Any]) -> None:
    """What enrollment does on redemption (atomic, only from pending)."""
    harness.db.execute(
        "UPDATE federation_grants SET status = 'active', activated_at = now() "
        "WHERE id = %s AND status = 'pending'",
        (grant["id"],),
    )
    harness.db.execute(
        "UPDATE federation_peers SET state = 'active' WHERE id = %s", (grant["peer_id"],)
    )


def set_expiry(harness: Harness, grant: dict[str, Any], when: datetime) -> None:
    harness.db.execute(
        "UPDATE federation_grants SET expires_at = %s WHERE id = %s", (when, grant["id"])
    )


def audit_rows(harness: Harness, action: str) -> list[dict[str, Any]]:
    return [row for row in harness.db.audit() if row["action"] == action]


async def test_create_makes_a_pending_grant_with_the_canonical_scope(harness: Harness) -> None:
    user = await harness.user()
    peer = await harness.peer()
    grant = await harness.grant(user["id"], peer["id"], {"resources": ["notes", "tasks"]})
    assert grant["status"] == "pending"
    assert grant["scope"] == {
        "resources": ["notes", "tasks"],
        "excluded_resources": [],
        "include_teams": [],
        "include_personal": True,
        "max_rows_per_query": 100,
    }
    row = harness.db.snapshot("federation_grants", grant["id"])
    assert row["status"] == "pending"
    assert row["scope"] == grant["scope"]
    assert row["subject_user_id"] == uuid.UUID(user["id"])
    [audit] = audit_rows(harness, "grant.create")
    assert audit["outcome"] == "allowed"
    assert audit["grant_id"] == uuid.UUID(grant["id"])
    assert audit["peer_id"] == uuid.UUID(peer["id"])
    assert audit["subject_user_id"] == uuid.UUID(user["id"])


@pytest.mark.parametrize(
    ("field", "code", "status"),
    [("subject_user_id", "user_not_found", 404), ("peer_id", "peer_not_found", 404)],
)
async def test_create_for_an_unknown_user_or_peer_is_refused(
    harness: Harness, field: str, code: str, status: int
) -> None:
    user = await harness.user()
    peer = await harness.peer()
    body = {
        "subject_user_id": user["id"],
        "peer_id": peer["id"],
        "scope": {"resources": ["tasks"]},
        field: str(uuid.uuid4()),
    }
    assert_error(await harness.call("POST", GRANTS, json=body), status, code)
    assert harness.db.count("federation_grants") == 0
    [audit] = audit_rows(harness, "grant.create")
    assert (audit["outcome"], audit["reason_code"]) == ("denied", code)


async def test_create_with_an_expiry_in_the_past_is_refused(harness: Harness) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    user = await harness.user()
    peer = await harness.peer()
    body = {
        "subject_user_id": user["id"],
        "peer_id": peer["id"],
        "scope": {"resources": ["tasks"]},
        "expires_at": past,
    }
    assert_error(await harness.call("POST", GRANTS, json=body), 422, "invalid_expiry")
    naive = {**body, "expires_at": "2999-01-01T00:00:00"}
    assert_error(await harness.call("POST", GRANTS, json=naive), 422, "validation_error")
    assert harness.db.count("federation_grants") == 0


async def test_pending_to_revoked_records_reason_time_and_revokes_unused_tokens(
    harness: Harness,
) -> None:
    grant = await harness.grant()
    await harness.token(grant["id"])
    await harness.token(grant["id"])
    revoked = await harness.ok(
        "PATCH", f"{GRANTS}/{grant['id']}/revoke", json={"reason": "no longer needed"}
    )
    assert revoked["status"] == "revoked"
    assert revoked["revoked_reason"] == "no longer needed"
    assert revoked["revoked_token_count"] == 2
    row = harness.db.snapshot("federation_grants", grant["id"])
    assert row["status"] == "revoked"
    assert row["revoked_at"] is not None
    assert row["revoked_reason"] == "no longer needed"
    unused = harness.db.one(
        "SELECT count(*) FROM federation_enrollment_tokens "
        "WHERE grant_id = %s AND revoked_at IS NULL",
        (grant["id"],),
    )
    assert unused[0] == 0
    [audit] = audit_rows(harness, "grant.revoke")
    assert audit["outcome"] == "allowed"
    assert audit["actor_id"] == str(harness.admin_token_id)
    assert audit["grant_id"] == uuid.UUID(grant["id"])


async def test_active_to_revoked_without_a_body(harness: Harness) -> None:
    grant = await harness.grant()
    activate(harness, grant)
    assert (await harness.ok("GET", f"{GRANTS}/{grant['id']}"))["status"] == "active"
    revoked = await harness.ok("PATCH", f"{GRANTS}/{grant['id']}/revoke")
    assert revoked["status"] == "revoked"
    assert revoked["revoked_reason"] is None
    assert revoked["activated_at"] is not None


@pytest.mark.parametrize("start", ["revoked", "expired"])
async def test_revoking_a_terminal_grant_is_409_and_changes_nothing(
    harness: Harness, start: str
) -> None:
    grant = await harness.grant()
    if start == "revoked":
        await harness.ok("PATCH", f"{GRANTS}/{grant['id']}/revoke", json={"reason": "first"})
    else:
        set_expiry(harness, grant, datetime.now(UTC) - timedelta(minutes=1))
        assert (await harness.ok("GET", f"{GRANTS}/{grant['id']}"))["status"] == "expired"
    before = harness.db.snapshot("federation_grants", grant["id"])
    response = await harness.call(
        "PATCH", f"{GRANTS}/{grant['id']}/revoke", json={"reason": "second"}
    )
    error = assert_error(response, 409, "invalid_transition")
    assert start in error["message"]
    assert harness.db.snapshot("federation_grants", grant["id"]) == before
    denied = [r for r in audit_rows(harness, "grant.revoke") if r["outcome"] == "denied"]
    assert len(denied) == 1
    assert denied[0]["reason_code"] == "invalid_transition"


async def test_revoking_an_unknown_grant_is_404(harness: Harness) -> None:
    unknown = uuid.uuid4()
    response = await harness.call("PATCH", f"{GRANTS}/{unknown}/revoke", json={})
    assert_error(response, 404, "grant_not_found")
    [audit] = audit_rows(harness, "grant.revoke")
    assert (audit["outcome"], audit["grant_id"]) == ("denied", unknown)


@pytest.mark.parametrize("start", ["pending", "active"])
async def test_a_live_grant_past_expires_at_reads_as_expired_and_is_persisted(
    harness: Harness, start: str
) -> None:
    grant = await harness.grant(expires_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    if start == "active":
        activate(harness, grant)
    set_expiry(harness, grant, datetime.now(UTC) - timedelta(seconds=1))
    assert harness.db.snapshot("federation_grants", grant["id"])["status"] == start
    shown = await harness.ok("GET", f"{GRANTS}/{grant['id']}")
    assert shown["status"] == "expired"
    assert harness.db.snapshot("federation_grants", grant["id"])["status"] == "expired"
    [audit] = audit_rows(harness, "grant.expire")
    assert audit["actor_type"] == "system"
    assert audit["grant_id"] == uuid.UUID(grant["id"])
    # Reading again does not expire (or audit) it twice.
    await harness.ok("GET", f"{GRANTS}/{grant['id']}")
    assert len(audit_rows(harness, "grant.expire")) == 1


async def test_the_list_expires_due_grants_and_leaves_the_rest(harness: Harness) -> None:
    due = await harness.grant()
    later = await harness.grant(expires_at=(datetime.now(UTC) + timedelta(days=1)).isoformat())
    forever = await harness.grant()
    revoked = await harness.grant()
    await harness.ok("PATCH", f"{GRANTS}/{revoked['id']}/revoke")
    set_expiry(harness, due, datetime.now(UTC) - timedelta(seconds=5))
    set_expiry(harness, revoked, datetime.now(UTC) - timedelta(seconds=5))
    listed = {g["id"]: g["status"] for g in (await harness.ok("GET", GRANTS))["items"]}
    assert listed == {
        due["id"]: "expired",
        later["id"]: "pending",
        forever["id"]: "pending",
        revoked["id"]: "revoked",  # revoked is terminal: it never becomes expired
    }


async def test_an_expired_grant_stays_expired_even_when_the_refused_action_rolls_back(
    harness: Harness,
) -> None:
    grant = await harness.grant()
    set_expiry(harness, grant, datetime.now(UTC) - timedelta(seconds=1))
    assert_error(
        await harness.call("PATCH", f"{GRANTS}/{grant['id']}/revoke", json={}),
        409,
        "invalid_transition",
    )
    assert harness.db.snapshot("federation_grants", grant["id"])["status"] == "expired"


async def test_two_concurrent_revocations_one_wins_one_is_409(harness: Harness) -> None:
    grant = await harness.grant()
    activate(harness, grant)
    first, second = await asyncio.gather(
        harness.call("PATCH", f"{GRANTS}/{grant['id']}/revoke", json={"reason": "a"}),
        harness.call("PATCH", f"{GRANTS}/{grant['id']}/revoke", json={"reason": "b"}),
    )
    statuses = sorted([first.status_code, second.status_code])
    assert statuses == [200, 409]
    loser = first if first.status_code == 409 else second
    assert_error(loser, 409, "invalid_transition")
    outcomes = sorted(r["outcome"] for r in audit_rows(harness, "grant.revoke"))
    assert outcomes == ["allowed", "denied"]


async def test_list_filters_and_pages(harness: Harness) -> None:
    alice = await harness.user("alice")
    bob = await harness.user("bob")
    peer_1 = await harness.peer("peer-1")
    peer_2 = await harness.peer("peer-2")
    a1 = await harness.grant(alice["id"], peer_1["id"])
    a2 = await harness.grant(alice["id"], peer_2["id"])
    b1 = await harness.grant(bob["id"], peer_1["id"])
    await harness.ok("PATCH", f"{GRANTS}/{a2['id']}/revoke")

    async def ids(**params: Any) -> set[str]:
        page = await harness.ok("GET", GRANTS, params=params)
        return {g["id"] for g in page["items"]}

    assert await ids(peer_id=peer_1["id"]) == {a1["id"], b1["id"]}
    assert await ids(user_id=alice["id"]) == {a1["id"], a2["id"]}
    assert await ids(status="revoked") == {a2["id"]}
    assert await ids(status="pending", peer_id=peer_1["id"], user_id=bob["id"]) == {b1["id"]}
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await harness.ok("GET", GRANTS, params=params)
        seen += [g["id"] for g in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted([a1["id"], a2["id"], b1["id"]])
    bad = await harness.call("GET", GRANTS, params={"cursor": "garbage!"})
    assert_error(bad, 422, "invalid_cursor")
    assert_error(
        await harness.call("GET", GRANTS, params={"status": "paused"}), 422, "validation_error"
    )


async def test_show_unknown_grant_is_404(harness: Harness) -> None:
    assert_error(await harness.call("GET", f"{GRANTS}/{uuid.uuid4()}"), 404, "grant_not_found")
