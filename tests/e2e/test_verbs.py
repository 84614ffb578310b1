"""The verbs through nginx with real peer certificates: capabilities, list, get, search and the
scope rules (native permissions ∩ scope, row cap, pagination, _source)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from fedcore import pki
from fedcore.dev_seed import SeededWorld
from tests.support.db import fetch_all
from tests.support.federation import PeerIdentity, enrolled_peer, seed_world
from tests.support.stack import Gateway
from verbs.settings import Settings

BINDING_CACHE_MAX_AGE = float(Settings.model_fields["binding_cache_max_age_seconds"].default)
VISIBLE = ("personal", "research-own", "research-other")
NEVER = ("ops", "finance", "bob-personal", "carol-personal")


def scope_for(world: SeededWorld, **overrides: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "resources": ["tasks", "notes", "teams", "users"],
        "excluded_resources": [],
        "include_teams": [str(world.teams["research"])],
        "include_personal": True,
        "max_rows_per_query": 3,
    }
    scope.update(overrides)
    return scope


@pytest.fixture(scope="module")
async def world(gateway_a: Gateway) -> SeededWorld:
    return await seed_world(gateway_a.database_url)


@pytest.fixture(scope="module")
async def alice_peer(gateway_a: Gateway, world: SeededWorld) -> PeerIdentity:
    return await enrolled_peer(gateway_a, scope_for(world), user_id=world.users["alice"])


async def _walk(peer: PeerIdentity, gw: Gateway, path: str, body: dict[str, Any]) -> list[Any]:
    """Follow next_cursor to the end; return every item."""
    items: list[Any] = []
    async with peer.client(gw) as client:
        cursor = None
        for _ in range(50):
            response = await client.post(path, json={**body, "cursor": cursor})
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["items"]) <= 3
            items.extend(page["items"])
            cursor = page["next_cursor"]
            assert page["truncated"] is (cursor is not None)
            if cursor is None:
                return items
    raise AssertionError("pagination did not end")


async def test_capabilities_describe_the_grant(
    gateway_a: Gateway, alice_peer: PeerIdentity, world: SeededWorld
) -> None:
    async with alice_peer.client(gateway_a) as client:
        response = await client.get("/capabilities")
    assert response.status_code == 200
    assert response.json() == {
        "resources": ["tasks", "notes", "teams", "users"],
        "excluded_resources": [],
        "max_rows_per_query": 3,
        "supported_verbs": ["capabilities", "list", "get", "search"],
        "grant_id": str(alice_peer.grant.grant_id),
        "subject_user_id": str(world.users["alice"]),
        "expires_at": None,
    }


@pytest.mark.parametrize("resource", ["tasks", "notes"])
async def test_list_walks_exactly_the_allowed_rows_once(
    gateway_a: Gateway, alice_peer: PeerIdentity, world: SeededWorld, resource: str
) -> None:
    items = await _walk(alice_peer, gateway_a, f"/list/{resource}", {})
    ids = [uuid.UUID(item["id"]) for item in items]
    assert len(ids) == len(set(ids))  # no row twice
    assert set(ids) == world.ids(resource, *VISIBLE)
    assert not set(ids) & world.ids(resource, *NEVER)
    assert {item["_source"] for item in items} == {gateway_a.name}
    assert all("search_vector" not in item for item in items)


async def test_search_returns_only_matching_allowed_rows(
    gateway_a: Gateway, alice_peer: PeerIdentity, world: SeededWorld
) -> None:
    # "personal" also matches bob's and carol's personal rows in the database.
    items = await _walk(alice_peer, gateway_a, "/search/tasks", {"query": "personal"})
    assert {uuid.UUID(i["id"]) for i in items} == world.ids("tasks", "personal")
    finance = await _walk(alice_peer, gateway_a, "/search/tasks", {"query": "finance"})
    assert finance == []


async def test_get_answers_404_for_absent_and_out_of_scope_alike(
    gateway_a: Gateway, alice_peer: PeerIdentity, world: SeededWorld
) -> None:
    visible = next(iter(world.ids("tasks", "research-other")))
    async with alice_peer.client(gateway_a) as client:
        ok = await client.post(f"/get/tasks/{visible}")
        assert ok.status_code == 200
        assert ok.json()["item"]["id"] == str(visible)
        assert ok.json()["item"]["_source"] == gateway_a.name
        hidden = [next(iter(world.ids("tasks", cls))) for cls in NEVER]
        for row_id in [*hidden, uuid.uuid4(), "not-a-uuid"]:
            response = await client.post(f"/get/tasks/{row_id}")
            assert response.status_code == 404, row_id
            assert response.json()["error"] == {
                "code": "not_found",
                "message": "no such row",
                "request_id": response.json()["error"]["request_id"],
            }


async def test_directory_resources_follow_the_same_rules(
    gateway_a: Gateway, alice_peer: PeerIdentity, world: SeededWorld
) -> None:
    teams = await _walk(alice_peer, gateway_a, "/list/teams", {})
    assert {uuid.UUID(t["id"]) for t in teams} == {world.teams["research"]}
    users = await _walk(alice_peer, gateway_a, "/list/users", {})
    assert {uuid.UUID(u["id"]) for u in users} == {world.users["alice"], world.users["bob"]}


async def test_personal_rows_stay_home_when_include_personal_is_false(
    gateway_a: Gateway, world: SeededWorld
) -> None:
    peer = await enrolled_peer(
        gateway_a, scope_for(world, include_personal=False), user_id=world.users["alice"]
    )
    items = await _walk(peer, gateway_a, "/list/tasks", {})
    assert {uuid.UUID(i["id"]) for i in items} == world.ids(
        "tasks", "research-own", "research-other"
    )
    personal = next(iter(world.ids("tasks", "personal")))
    async with peer.client(gateway_a) as client:
        assert (await client.post(f"/get/tasks/{personal}")).status_code == 404
    searched = await _walk(peer, gateway_a, "/search/tasks", {"query": "personal"})
    assert searched == []


async def test_a_team_the_user_left_disappears_at_once(
    gateway_a: Gateway, world: SeededWorld
) -> None:
    """Native permissions are read per request: scope names ops, alice is in ops → visible;
    remove her from ops → gone as soon as the change is announced to the verbs (the binding
    cache's notification, milliseconds), never later than the cache's age limit."""
    from tests.support.db import fetch_all

    peer = await enrolled_peer(
        gateway_a,
        scope_for(world, include_teams=[str(world.teams["ops"])], include_personal=False),
        user_id=world.users["alice"],
    )
    before = await _walk(peer, gateway_a, "/list/notes", {})
    assert {uuid.UUID(i["id"]) for i in before} == world.ids("notes", "ops")
    fetch_all(
        gateway_a.database_url,
        "DELETE FROM team_members WHERE team_id = %s AND user_id = %s RETURNING team_id",
        (world.teams["ops"], world.users["alice"]),
    )
    try:
        removed_at = time.monotonic()
        while await _walk(peer, gateway_a, "/list/notes", {}) != []:
            assert time.monotonic() - removed_at < BINDING_CACHE_MAX_AGE + 0.5
            await asyncio.sleep(0.01)
        assert await _walk(peer, gateway_a, "/list/notes", {}) == []  # and it stays gone
    finally:
        fetch_all(
            gateway_a.database_url,
            "INSERT INTO team_members (team_id, user_id) VALUES (%s, %s) RETURNING team_id",
            (world.teams["ops"], world.users["alice"]),
        )


async def test_filters_are_a_typed_allowlist(
    gateway_a: Gateway, alice_peer: PeerIdentity, world: SeededWorld
) -> None:
    done = await _walk(alice_peer, gateway_a, "/list/tasks", {"filter": {"status": "done"}})
    assert done
    assert {item["status"] for item in done} == {"done"}
    async with alice_peer.client(gateway_a) as client:
        unknown_key = await client.post("/list/tasks", json={"filter": {"owner_user_id": "x"}})
        assert unknown_key.status_code == 422
        assert unknown_key.json()["error"]["code"] == "validation_error"
        bad_status = await client.post("/list/tasks", json={"filter": {"status": "x; DROP"}})
        assert bad_status.status_code == 422
        wrong_resource = await client.post("/list/notes", json={"filter": {"status": "done"}})
        assert wrong_resource.status_code == 400
        assert wrong_resource.json()["error"]["code"] == "invalid_filter"
        cursor = await client.post("/list/tasks", json={"cursor": "!!!"})
        assert cursor.status_code == 400
        assert cursor.json()["error"]["code"] == "invalid_cursor"


async def test_row_cap_applies_to_list_and_search_whatever_the_peer_asks(
    gateway_a: Gateway, alice_peer: PeerIdentity
) -> None:
    async with alice_peer.client(gateway_a) as client:
        listed = await client.post("/list/tasks", json={"limit": 1000})
        searched = await client.post("/search/tasks", json={"query": "task", "limit": 1000})
        smaller = await client.post("/list/tasks", json={"limit": 2})
    assert len(listed.json()["items"]) == 3
    assert listed.json()["truncated"] is True
    assert len(searched.json()["items"]) == 3
    assert len(smaller.json()["items"]) == 2


async def test_revocation_refuses_the_very_next_call(
    gateway_a: Gateway, world: SeededWorld, record_property: Any
) -> None:
    """B calls in a loop; A's admin revokes the grant through the admin API; the first call that
    starts after the revoke answered is refused. The latency is measured and reported (the
    benchmark reports it over many trials)."""
    peer = await enrolled_peer(gateway_a, scope_for(world), user_id=world.users["alice"])
    stop = asyncio.Event()
    calls: list[tuple[float, int, str | None]] = []

    async def caller() -> None:
        async with peer.client(gateway_a) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    response = await client.get("/capabilities")
                except httpx.TransportError:
                    # The certificate revocation reloads nginx, which closes kept-alive
                    # connections: an in-flight call may be cut; the next one reconnects.
                    continue
                code = response.json().get("error", {}).get("code")
                calls.append((started, response.status_code, code))

    task = asyncio.create_task(caller())
    await asyncio.sleep(0.3)
    revoke_sent = time.monotonic()
    async with httpx.AsyncClient(base_url=gateway_a.admin_url, timeout=10) as admin:
        revoked = await admin.patch(
            f"/api/admin/federation/grants/{peer.grant.grant_id}/revoke",
            json={"reason": "test"},
            headers={"Authorization": f"Bearer {gateway_a.admin_token}"},
        )
    revoked_at = time.monotonic()
    await asyncio.sleep(0.5)
    stop.set()
    await task
    assert revoked.status_code == 200, revoked.text

    before = [c for c in calls if c[0] < revoke_sent]
    after = [c for c in calls if c[0] >= revoked_at]
    assert before
    assert after
    assert {status for _, status, _ in before[:-1]} == {200}  # allowed until the revoke
    # Refused from the first call after the revoke answered: the grant (403) or, once the
    # certificate revocation has reached the CRL and nginx, the certificate itself (401).
    refusals = {(403, "grant_revoked"), (401, "client_cert_revoked"), (401, "client_cert_invalid")}
    assert {(status, code) for _, status, code in after} <= refusals
    first_refusal = min(t for t, status, _ in calls if status in (401, 403))
    latency = max(0.0, first_refusal - revoked_at)
    record_property("revocation_latency_seconds", round(latency, 4))
    print(f"revocation → first refusal: {latency * 1000:.1f} ms")


async def test_each_read_leaves_one_audit_row_with_its_page_size(
    gateway_a: Gateway, world: SeededWorld
) -> None:
    """list and search insert their audit row in the row query itself (verbs.reads): the row
    names who read what, and counts the rows that left (the page, not the look-ahead row)."""
    peer = await enrolled_peer(gateway_a, scope_for(world), user_id=world.users["alice"])
    serial = pki.serial_hex(peer.cert)
    calls = [
        ("/list/tasks", {}, "verb.list", 3),  # more than 3 visible: a full page
        ("/search/tasks", {"query": "personal"}, "verb.search", None),
        ("/search/tasks", {"query": "finance"}, "verb.search", 0),  # nothing visible matches
        ("/list/teams", {}, "verb.list", 1),  # the directory: audited after its read
    ]
    sizes, request_ids = [], []
    async with peer.client(gateway_a) as client:
        for path, body, _, _ in calls:
            response = await client.post(path, json=body)
            assert response.status_code == 200, response.text
            sizes.append(len(response.json()["items"]))
            request_ids.append(response.headers["x-request-id"])  # nginx's id for the request
    rows = fetch_all(
        gateway_a.database_url,
        "SELECT action, outcome::text, reason_code, resource, row_count, grant_id, peer_id, "
        "subject_user_id, actor_type::text, actor_id, request_id FROM federation_audit_log "
        "WHERE cert_serial = %s AND action LIKE 'verb.%%' ORDER BY id",
        (serial,),
    )
    assert len(rows) == len(calls)  # exactly one per request
    for row, (path, _, action, expected_size), size, request_id in zip(
        rows, calls, sizes, request_ids, strict=True
    ):
        assert row[:5] == (action, "allowed", None, path.rsplit("/", 1)[1], size)
        if expected_size is not None:
            assert size == expected_size
        assert row[5:] == (
            peer.grant.grant_id,
            peer.grant.peer_id,
            world.users["alice"],
            "peer",
            str(peer.grant.peer_id),
            request_id,
        )
