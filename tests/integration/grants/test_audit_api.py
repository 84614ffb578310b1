"""GET /api/admin/federation/audit: newest first, cursor by id, filters by grant, peer, outcome,
action and time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.integration.grants.harness import Harness, assert_error

AUDIT = "/api/admin/federation/audit"


async def _page(harness: Harness, **params: Any) -> dict[str, Any]:
    page: dict[str, Any] = await harness.ok("GET", AUDIT, params=params)
    return page


async def test_newest_first_and_the_cursor_walks_every_row_once(harness: Harness) -> None:
    for _ in range(3):
        await harness.grant()
    expected = [row["id"] for row in reversed(harness.db.audit())]
    assert len(expected) == 9  # user, peer, grant per grant
    seen: list[int] = []
    cursor: str | None = None
    while True:
        page = await _page(harness, limit=4, **({"cursor": cursor} if cursor else {}))
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected


async def test_filters(harness: Harness) -> None:
    grant = await harness.grant()
    other = await harness.grant()
    await harness.ok("PATCH", f"/api/admin/federation/grants/{grant['id']}/revoke")
    refused = await harness.call("PATCH", f"/api/admin/federation/grants/{grant['id']}/revoke")
    assert refused.status_code == 409

    by_grant = await _page(harness, grant_id=grant["id"])
    assert [(i["action"], i["outcome"]) for i in by_grant["items"]] == [
        ("grant.revoke", "denied"),
        ("grant.revoke", "allowed"),
        ("grant.create", "allowed"),
    ]
    by_peer = await _page(harness, peer_id=other["peer_id"])
    assert {i["action"] for i in by_peer["items"]} == {"peer.create", "grant.create"}
    denied = await _page(harness, outcome="denied")
    assert [i["reason_code"] for i in denied["items"]] == ["invalid_transition"]
    creates = await _page(harness, action="grant.create")
    assert len(creates["items"]) == 2
    future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert (await _page(harness, since=future))["items"] == []
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    assert len((await _page(harness, since=past))["items"]) == len(harness.db.audit())


async def test_bad_parameters_are_422(harness: Harness) -> None:
    for params, code in (
        ({"cursor": "abc"}, "invalid_cursor"),
        ({"outcome": "maybe"}, "validation_error"),
        ({"since": "2024-01-01T00:00:00"}, "validation_error"),  # naive time: ambiguous
        ({"limit": 0}, "validation_error"),
        ({"limit": 501}, "validation_error"),
        ({"grant_id": "not-a-uuid"}, "validation_error"),
    ):
        assert_error(await harness.call("GET", AUDIT, params=params), 422, code)


async def test_items_carry_the_actor_and_request_id(harness: Harness) -> None:
    await harness.call(
        "POST", "/api/admin/teams", json={"name": "t"}, headers={"X-Request-Id": "req-audit-0001"}
    )
    [item] = (await _page(harness))["items"]
    assert item["request_id"] == "req-audit-0001"
    assert item["actor_type"] == "admin_token"
    assert item["actor_id"] == str(harness.admin_token_id)
    assert uuid.UUID(item["target_id"])
