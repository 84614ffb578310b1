"""The peer state machine through the admin API: pending -> active (by enrolling only),
active <-> suspended, pending|active|suspended -> revoked (terminal, cascades to the peer's live
grants and unused tokens). Illegal transitions: 409 invalid_transition, row unchanged, audited."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.integration.grants.harness import Harness, assert_error

PEERS = "/api/admin/federation/peers"
GRANTS = "/api/admin/federation/grants"


def force_state(harness: Harness, peer_id: str, state: str) -> None:
    harness.db.execute("UPDATE federation_peers SET state = %s WHERE id = %s", (state, peer_id))


async def change(harness: Harness, peer_id: str, state: str, **extra: Any) -> Any:
    return await harness.call("PATCH", f"{PEERS}/{peer_id}/state", json={"state": state, **extra})


async def test_create_list_show(harness: Harness) -> None:
    peer = await harness.peer("gateway-b")
    with_endpoint = await harness.ok(
        "POST", PEERS, 201, json={"name": "gateway-c", "endpoint_url": "https://c.example:8443/"}
    )
    assert peer["state"] == "pending"
    assert with_endpoint["endpoint_url"] == "https://c.example:8443"
    listed = await harness.ok("GET", PEERS)
    assert {p["name"] for p in listed["items"]} == {"gateway-b", "gateway-c"}
    assert (await harness.ok("GET", PEERS, params={"state": "active"}))["items"] == []
    assert (await harness.ok("GET", f"{PEERS}/{peer['id']}"))["name"] == "gateway-b"
    assert_error(await harness.call("GET", f"{PEERS}/{uuid.uuid4()}"), 404, "peer_not_found")


async def test_duplicate_name_is_409_and_creates_nothing(harness: Harness) -> None:
    await harness.peer("gateway-b")
    response = await harness.call("POST", PEERS, json={"name": "gateway-b"})
    assert_error(response, 409, "peer_name_taken")
    assert harness.db.count("federation_peers") == 1
    denied = [r for r in harness.db.audit() if r["outcome"] == "denied"]
    assert [(r["action"], r["reason_code"]) for r in denied] == [("peer.create", "peer_name_taken")]


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "has space"},
        {"name": "-leading-dash"},
        {"name": "x" * 64},
        {"name": "{{template}}"},
        {"name": "ok", "endpoint_url": "http://plain.example"},
        {"name": "ok", "endpoint_url": "https://user:pw@b.example"},
        {"name": "ok", "endpoint_url": "https://b.example/?q=1"},
        {"name": "ok", "unknown": 1},
    ],
)
async def test_invalid_peer_bodies_are_422(harness: Harness, body: dict[str, Any]) -> None:
    assert_error(await harness.call("POST", PEERS, json=body), 422, "validation_error")
    assert harness.db.count("federation_peers") == 0


LEGAL = [
    ("active", "suspended"),
    ("suspended", "active"),
    ("pending", "revoked"),
    ("active", "revoked"),
    ("suspended", "revoked"),
]
ILLEGAL = [
    ("pending", "active"),  # only enrollment activates a peer
    ("pending", "suspended"),
    ("active", "active"),
    ("suspended", "suspended"),
    ("revoked", "active"),
    ("revoked", "suspended"),
    ("revoked", "revoked"),
]


@pytest.mark.parametrize(("start", "target"), LEGAL)
async def test_legal_transitions(harness: Harness, start: str, target: str) -> None:
    peer = await harness.peer()
    force_state(harness, peer["id"], start)
    response = await change(harness, peer["id"], target)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == target
    assert harness.db.snapshot("federation_peers", peer["id"])["state"] == target
    action = {"active": "peer.resume", "suspended": "peer.suspend", "revoked": "peer.revoke"}[
        target
    ]
    [audit] = [r for r in harness.db.audit() if r["action"] == action]
    assert (audit["outcome"], audit["peer_id"]) == ("allowed", uuid.UUID(peer["id"]))


@pytest.mark.parametrize(("start", "target"), ILLEGAL)
async def test_illegal_transitions_are_409_and_change_nothing(
    harness: Harness, start: str, target: str
) -> None:
    peer = await harness.peer()
    force_state(harness, peer["id"], start)
    before = harness.db.snapshot("federation_peers", peer["id"])
    refused = assert_error(await change(harness, peer["id"], target), 409, "invalid_transition")
    assert refused["message"] in {
        "the peer is revoked; revoked is terminal",
        "a pending peer becomes active only by enrolling",
        f"{'an' if start == 'active' else 'a'} {start} peer cannot become {target}",
    }
    assert harness.db.snapshot("federation_peers", peer["id"]) == before
    denied = [r for r in harness.db.audit() if r["outcome"] == "denied"]
    assert len(denied) == 1
    assert denied[0]["reason_code"] == "invalid_transition"


async def test_unknown_peer_and_unknown_state(harness: Harness) -> None:
    assert_error(await change(harness, str(uuid.uuid4()), "revoked"), 404, "peer_not_found")
    peer = await harness.peer()
    assert_error(await change(harness, peer["id"], "pending"), 422, "validation_error")
    assert harness.db.snapshot("federation_peers", peer["id"])["state"] == "pending"


async def test_revoking_a_peer_revokes_its_live_grants_and_unused_tokens_only(
    harness: Harness,
) -> None:
    peer = await harness.peer("doomed")
    other_peer = await harness.peer("unaffected")
    pending = await harness.grant(peer_id=peer["id"])
    active = await harness.grant(peer_id=peer["id"])
    already = await harness.grant(peer_id=peer["id"])
    other = await harness.grant(peer_id=other_peer["id"])
    await harness.token(pending["id"])
    await harness.token(other["id"])
    harness.db.execute(
        "UPDATE federation_grants SET status = 'active' WHERE id = %s", (active["id"],)
    )
    await harness.ok("PATCH", f"{GRANTS}/{already['id']}/revoke", json={"reason": "earlier"})
    force_state(harness, peer["id"], "active")

    result = await change(harness, peer["id"], "revoked", reason="compromised")
    assert result.status_code == 200, result.text
    body = result.json()
    assert sorted(body["revoked_grant_ids"]) == sorted([pending["id"], active["id"]])
    status = {
        g["id"]: (g["status"], g["revoked_reason"])
        for g in (await harness.ok("GET", GRANTS))["items"]
    }
    assert status == {
        pending["id"]: ("revoked", "compromised"),
        active["id"]: ("revoked", "compromised"),
        already["id"]: ("revoked", "earlier"),
        other["id"]: ("pending", None),
    }
    live_tokens = harness.db.rows(
        "SELECT grant_id FROM federation_enrollment_tokens WHERE revoked_at IS NULL"
    )
    assert live_tokens == [(uuid.UUID(other["id"]),)]
    cascaded = [r for r in harness.db.audit() if r["reason_code"] == "peer_revoked"]
    assert sorted(str(r["grant_id"]) for r in cascaded) == sorted([pending["id"], active["id"]])
    assert all(r["actor_type"] == "system" for r in cascaded)


async def test_a_revoked_peer_gets_no_new_grant(harness: Harness) -> None:
    peer = await harness.peer()
    user = await harness.user()
    force_state(harness, peer["id"], "revoked")
    body = {"subject_user_id": user["id"], "peer_id": peer["id"], "scope": {"resources": ["tasks"]}}
    assert_error(await harness.call("POST", GRANTS, json=body), 409, "peer_revoked")
    assert harness.db.count("federation_grants") == 0


async def test_a_suspended_peer_gets_no_enrollment_token(harness: Harness) -> None:
    peer = await harness.peer()
    grant = await harness.grant(peer_id=peer["id"])
    force_state(harness, peer["id"], "suspended")
    response = await harness.call("POST", f"{GRANTS}/{grant['id']}/tokens", json={})
    assert_error(response, 409, "peer_suspended")
    assert harness.db.count("federation_enrollment_tokens") == 0
