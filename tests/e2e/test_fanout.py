"""The outbound side between two launcher-started gateways (real nginx, real TLS, real CA):
B enrolls at A with `mosaic federation peer add`, calls A's verbs through the federation client,
and fans local queries out (`POST /api/local/v1/query/{resource}` on B's admin listener).

Dead peers are simulated without touching the shared gateways: a connection of B enrolled at A
for real, then redirected to a blackholed port (accepts, never answers) or a closed port.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from fedcore.dev_seed import SeededWorld
from fedcore.federation_client import (
    ConnectionMaterial,
    FederationClient,
    PeerRefused,
)
from fedcore.models import FederationConnection, Note, Task
from fedcore.sealing import Sealer
from tests.support.cli import mosaic, mosaic_json
from tests.support.db import execute, fetch_all, fetch_one
from tests.support.fanout import (
    Blackhole,
    Enrolled,
    LocalApi,
    closed_port_url,
    enroll_b_at_a,
    redirect_connection,
    retire_connection,
    user_token,
)
from tests.support.federation import seed_world
from tests.support.net import host
from tests.support.stack import Gateway
from verbs.settings import Settings

SOURCE_TIMEOUT = float(Settings.model_fields["fanout_source_timeout_seconds"].default)
CIRCUIT_THRESHOLD = int(Settings.model_fields["circuit_failure_threshold"].default)
# Every class alice sees natively on her own gateway (own rows + research + ops).
NATIVE = ("personal", "research-own", "research-other", "ops")
NEVER_NATIVE = ("finance", "bob-personal", "carol-personal")
# What A's grant lets B read: alice's personal rows + the research team.
GRANTED = ("personal", "research-own", "research-other")
DOWN_CODES = {"source_timeout", "peer_timeout"}
REVOKED_CODES = {"grant_revoked", "client_cert_revoked", "client_cert_invalid"}


@dataclass(frozen=True)
class Federation:
    a: Gateway
    b: Gateway
    world_a: SeededWorld
    world_b: SeededWorld
    to_a: Enrolled
    api: LocalApi  # as B's alice (user token)
    marker: str  # a word only A's rows carry
    folder: Path

    def enroll(self, prefix: str) -> Enrolled:
        return _enroll(self.a, self.b, self.world_a, self.folder, prefix)


def _enroll(a: Gateway, b: Gateway, world_a: SeededWorld, folder: Path, prefix: str) -> Enrolled:
    """B enrolls at A (real CLI on both sides) for a grant of A's alice: her personal rows and
    the research team's."""
    scope = {
        "resources": ["tasks", "notes", "teams", "users"],
        "include_teams": [str(world_a.teams["research"])],
        "include_personal": True,
        "max_rows_per_query": 50,
    }
    return enroll_b_at_a(a, b, world_a.users["alice"], scope, folder, prefix)


def _ids(items: list[dict[str, Any]]) -> set[uuid.UUID]:
    return {uuid.UUID(item["id"]) for item in items}


def _from(answer: dict[str, Any], connection: str | None) -> list[dict[str, Any]]:
    return [item for item in answer["items"] if item.get("_connection") == connection]


def _error(answer: dict[str, Any], source: str) -> str | None:
    codes = [e["code"] for e in answer["errors"] if e["source"] == source]
    assert len(codes) <= 1
    return codes[0] if codes else None


@pytest.fixture(scope="module")
async def fed(
    gateway_a: Gateway, gateway_b: Gateway, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Federation]:
    world_a = await seed_world(gateway_a.database_url)
    world_b = await seed_world(gateway_b.database_url)
    marker = f"amarker{uuid.uuid4().hex[:12]}"
    # Rows only A has, with a word that must never show up anywhere on B.
    engine = create_async_engine(gateway_a.database_url)
    try:
        async with async_sessionmaker(engine)() as session:
            for model in (Task, Note):
                session.add(
                    model(
                        owner_user_id=world_a.users["alice"],
                        title=f"{marker} personal row",
                        body=f"{marker} body only gateway a holds",
                    )
                )
            await session.commit()
    finally:
        await engine.dispose()
    folder = tmp_path_factory.mktemp("fanout")
    to_a = _enroll(gateway_a, gateway_b, world_a, folder, "to-a")
    api = LocalApi(gateway_b, user_token(gateway_b, world_b.users["alice"]))
    try:
        yield Federation(gateway_a, gateway_b, world_a, world_b, to_a, api, marker, folder)
    finally:
        api.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole(host(250))
    try:
        yield hole
    finally:
        hole.close()


@pytest.fixture(scope="module")
def dead(fed: Federation) -> Iterator[Enrolled]:
    """A real enrollment at A whose endpoint is then moved to a blackholed port."""
    hole = Blackhole(host(251))
    enrolled = fed.enroll("zz-dead")
    redirect_connection(fed.b, enrolled.name, hole.url)
    try:
        yield enrolled
    finally:
        retire_connection(fed.b, enrolled.name)
        hole.close()


def _a_visible(fed: Federation, resource: str) -> set[uuid.UUID]:
    marker_rows = fetch_all(
        fed.a.database_url,
        f"SELECT id FROM {resource} WHERE title LIKE %s",  # noqa: S608 - fixed names
        (f"{fed.marker}%",),
    )
    return fed.world_a.ids(resource, *GRANTED) | {row[0] for row in marker_rows}


async def _connection_row(b: Gateway, name: str) -> Any:
    engine = create_async_engine(b.database_url)
    try:
        async with async_sessionmaker(engine)() as session:
            return (
                await session.execute(
                    select(FederationConnection).where(FederationConnection.name == name)
                )
            ).scalar_one()
    finally:
        await engine.dispose()


def _checkpoint(gateway: Gateway) -> None:
    # Not allowed for every role; the SQL scan covers every table regardless.
    with contextlib.suppress(psycopg.Error):
        execute(gateway.database_url, "CHECKPOINT")


def _b_sealer(b: Gateway) -> Sealer:
    secrets: dict[str, str] = json.loads((b.spec.state_dir / "secrets.json").read_text())
    return Sealer(secrets["gateway_secret"])


# ------------------------------------------------------------------------------ the client


async def test_the_federation_client_calls_each_verb_with_the_enrolled_identity(
    fed: Federation,
) -> None:
    row = await _connection_row(fed.b, fed.to_a.name)
    material = ConnectionMaterial.from_row(row)
    async with FederationClient.create(material, _b_sealer(fed.b)) as client:
        capabilities = await client.capabilities()
        assert capabilities.grant_id == fed.to_a.grant["id"]
        assert capabilities.subject_user_id == str(fed.world_a.users["alice"])
        assert capabilities.resources == ["tasks", "notes", "teams", "users"]

        listed = await client.list("tasks", limit=50)
        assert _ids(listed.items) == _a_visible(fed, "tasks")
        assert {item["_source"] for item in listed.items} == {fed.a.name}
        assert listed.truncated is False

        visible = next(iter(fed.world_a.ids("tasks", "research-other")))
        item = await client.get("tasks", str(visible))
        assert item["id"] == str(visible)

        searched = await client.search("notes", "research", limit=50)
        assert _ids(searched.items) == fed.world_a.ids("notes", "research-own", "research-other")

        # Refusals carry A's own code; nothing on B changes.
        before = fetch_all(fed.b.database_url, "SELECT id, state FROM federation_connections")
        hidden = next(iter(fed.world_a.ids("tasks", "finance")))
        with pytest.raises(PeerRefused) as not_found:
            await client.get("tasks", str(hidden))
        assert (not_found.value.status, not_found.value.code) == (404, "not_found")
        with pytest.raises(PeerRefused) as out_of_scope:
            await client.list("credentials")
        assert (out_of_scope.value.status, out_of_scope.value.code) == (
            403,
            "resource_not_in_scope",
        )
        assert fetch_all(fed.b.database_url, "SELECT id, state FROM federation_connections") == (
            before
        )


# ------------------------------------------------------------------------------ local query


def test_local_source_follows_the_users_native_permissions(fed: Federation) -> None:
    answer = fed.api.query("tasks", source="local")
    assert _ids(answer["items"]) == fed.world_b.ids("tasks", *NATIVE)
    assert not _ids(answer["items"]) & fed.world_b.ids("tasks", *NEVER_NATIVE)
    assert {item["_source"] for item in answer["items"]} == {fed.b.name}
    assert answer["errors"] == []
    assert answer["_partial"] is False
    assert [s["source"] for s in answer["sources"]] == ["local"]

    searched = fed.api.query("notes", source="local", query="research")
    assert _ids(searched["items"]) == fed.world_b.ids("notes", "research-own", "research-other")
    teams = fed.api.query("teams", source="local")
    assert _ids(teams["items"]) == {fed.world_b.teams["research"], fed.world_b.teams["ops"]}


def test_all_merges_local_rows_and_the_peers_rows_in_a_stable_order(fed: Federation) -> None:
    answer = fed.api.query("tasks", source="all", limit=50)
    sources = [s["source"] for s in answer["sources"]]
    assert sources[0] == "local"
    assert sources[1:] == sorted(sources[1:])  # connections by name
    assert f"federated:{fed.to_a.name}" in sources
    assert _error(answer, f"federated:{fed.to_a.name}") is None
    assert answer["_partial"] is bool(answer["errors"])

    local = _from(answer, None)
    remote = _from(answer, fed.to_a.name)
    assert _ids(local) == fed.world_b.ids("tasks", *NATIVE)
    assert {item["_source"] for item in local} == {fed.b.name}
    assert _ids(remote) == _a_visible(fed, "tasks")
    assert {item["_source"] for item in remote} == {fed.a.name}
    # Merge order: every row sits in its source's block, blocks in the `sources` order, rows in
    # each block in the source's own (id) order.
    position = {source: i for i, source in enumerate(sources)}
    blocks = [
        position["local" if "_connection" not in i else f"federated:{i['_connection']}"]
        for i in answer["items"]
    ]
    assert blocks == sorted(blocks)
    assert [i["id"] for i in remote] == sorted(i["id"] for i in remote)
    # Same query, same answer order.
    again = fed.api.query("tasks", source="all", limit=50)
    assert [i["id"] for i in again["items"]] == [i["id"] for i in answer["items"]]


def test_federated_source_reads_one_connection_and_limit_applies_per_source(
    fed: Federation,
) -> None:
    answer = fed.api.query("tasks", source=f"federated:{fed.to_a.name}", limit=2)
    assert [s["source"] for s in answer["sources"]] == [f"federated:{fed.to_a.name}"]
    assert len(answer["items"]) == 2
    assert answer["sources"][0]["truncated"] is True
    assert _ids(answer["items"]) <= _a_visible(fed, "tasks")


def test_query_refusals_carry_their_code_and_change_nothing(fed: Federation) -> None:
    def audit_count() -> int:
        return int(fetch_one(fed.b.database_url, "SELECT count(*) FROM federation_audit_log")[0])

    admin = fed.b.admin_token
    cases: list[tuple[str, dict[str, Any], str | None, int, str]] = [
        ("tasks", {"source": "all"}, admin, 422, "as_user_required"),
        ("tasks", {"source": "local", "as_user": str(uuid.uuid4())}, admin, 404, "user_not_found"),
        (
            "tasks",
            {"source": "local", "as_user": str(fed.world_b.users["bob"])},
            None,
            403,
            "as_user_forbidden",
        ),
        ("widgets", {"source": "local"}, None, 404, "unknown_resource"),
        ("teams", {"source": "local", "query": "x"}, None, 400, "invalid_search"),
        ("tasks", {"source": "federated:nope"}, None, 404, "connection_not_found"),
        ("tasks", {"source": "elsewhere"}, None, 422, "validation_error"),
        ("tasks", {"source": "local", "limit": 0}, None, 422, "validation_error"),
        ("tasks", {"source": "local", "sql": "1"}, None, 422, "validation_error"),
    ]
    for resource, body, token, status, code in cases:
        before = audit_count()
        response = fed.api.post(resource, body, token=token)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["code"] == code, body
        assert audit_count() == before + 1  # the refusal is audited, nothing else is written
        [(outcome, reason)] = fetch_all(
            fed.b.database_url,
            "SELECT outcome::text, reason_code FROM federation_audit_log "
            "WHERE action = 'local.query' ORDER BY id DESC LIMIT 1",
        )
        assert (outcome, reason) == ("denied", code)

    # Without the proxy secret (straight to the service, skipping nginx): refused.
    direct = httpx.post(
        f"{fed.b.service_url('verbs')}/api/local/v1/query/tasks",
        json={"source": "local"},
        headers={"Authorization": f"Bearer {fed.api.token}"},
        timeout=10,
    )
    assert direct.status_code == 401
    assert direct.json()["error"]["code"] == "untrusted_proxy"
    # Without a token: refused by the admin auth.
    anonymous = httpx.post(
        f"{fed.b.admin_url}/api/local/v1/query/tasks", json={"source": "local"}, timeout=10
    )
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "admin_token_required"


def test_a_connection_that_is_not_active_is_refused(fed: Federation) -> None:
    pending = f"pending-{uuid.uuid4().hex[:6]}"
    fetch_all(
        fed.b.database_url,
        "INSERT INTO federation_connections (id, name, endpoint_url, state, sealed_private_key) "
        "VALUES (%s, %s, 'https://127.0.0.1:1', 'pending', '\\x00') RETURNING id",
        (uuid.uuid4(), pending),
    )
    try:
        response = fed.api.post("tasks", {"source": f"federated:{pending}"})
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "connection_not_active"
        answer = fed.api.query("tasks", source="all")
        assert f"federated:{pending}" not in [s["source"] for s in answer["sources"]]
    finally:
        fetch_all(
            fed.b.database_url,
            "DELETE FROM federation_connections WHERE name = %s RETURNING id",
            (pending,),
        )


def test_a_retired_connection_is_never_called_again(fed: Federation) -> None:
    enrolled = fed.enroll("retired")
    source = f"federated:{enrolled.name}"
    assert not fed.api.query("tasks", source=source)["errors"]  # a live client is cached
    calls_at_a = _verbs_calls(fed, enrolled.grant["id"])
    assert calls_at_a >= 1

    retired = retire_connection(fed.b, enrolled.name)
    assert retired is not None
    assert (retired["id"], retired["state"]) == (enrolled.connection["id"], "revoked")

    response = fed.api.post("tasks", {"source": source})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "connection_not_active"
    answer = fed.api.query("tasks", source="all")
    assert source not in [s["source"] for s in answer["sources"]]
    assert _verbs_calls(fed, enrolled.grant["id"]) == calls_at_a  # nothing went out
    # The key is gone from B's database; the grant at A is A's to revoke (still active there).
    [(key,)] = fetch_all(
        fed.b.database_url,
        "SELECT sealed_private_key FROM federation_connections WHERE name = %s",
        (enrolled.name,),
    )
    assert bytes(key) == b""
    [(status,)] = fetch_all(
        fed.a.database_url,
        "SELECT status::text FROM federation_grants WHERE id = %s",
        (enrolled.grant["id"],),
    )
    assert status == "active"
    again = mosaic("federation", "connection", "retire", enrolled.connection["id"], gateway=fed.b)
    assert again.returncode == 1
    assert "error: invalid_transition:" in again.stderr
    # Retired, it can be deleted: its name is free again.
    deleted = mosaic_json(
        "federation", "connection", "delete", enrolled.connection["id"], gateway=fed.b
    )
    assert deleted == {"id": enrolled.connection["id"], "deleted": True}
    assert not fetch_all(
        fed.b.database_url,
        "SELECT id FROM federation_connections WHERE name = %s",
        (enrolled.name,),
    )


def _verbs_calls(fed: Federation, grant_id: str) -> int:
    [(count,)] = fetch_all(
        fed.a.database_url,
        "SELECT count(*) FROM federation_audit_log WHERE grant_id = %s AND action LIKE 'verb.%%'",
        (grant_id,),
    )
    return int(count)


def test_the_cli_queries_and_shows_sources(fed: Federation) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")} | {
        "MOSAIC_ADMIN_URL": fed.b.admin_url,
        "MOSAIC_ADMIN_TOKEN": fed.api.token,
    }
    source = f"federated:{fed.to_a.name}"
    human = mosaic(
        "federation", "query", "tasks", "--source", source, "--query", "research", env=env
    )
    assert human.returncode == 0, human.stderr
    assert "task research-own 0" in human.stdout
    assert f"source {source}: ok" in human.stdout
    as_json = mosaic("federation", "query", "notes", "--source", "local", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert _ids(answer["items"]) == fed.world_b.ids("notes", *NATIVE)

    capabilities = mosaic_json(
        "federation", "connection", "capabilities", fed.to_a.name, gateway=fed.b
    )
    assert capabilities["grant_id"] == fed.to_a.grant["id"]
    assert capabilities["supported_verbs"] == ["capabilities", "list", "get", "search"]


# ------------------------------------------------------------------------------ dead peers


def test_a_hung_peer_makes_the_answer_partial_within_the_source_timeout(
    fed: Federation, blackhole: Blackhole
) -> None:
    hung = fed.enroll("hung")
    redirect_connection(fed.b, hung.name, blackhole.url)
    try:
        answer, elapsed = fed.api.timed("tasks", source="all", limit=50)
        print(f"fan-out with a hung peer: {elapsed * 1000:.0f} ms (timeout {SOURCE_TIMEOUT} s)")
        assert elapsed < SOURCE_TIMEOUT + 0.2
        assert answer["_partial"] is True
        assert _error(answer, f"federated:{hung.name}") in DOWN_CODES
        # The healthy sources' rows are all there.
        assert _ids(_from(answer, None)) == fed.world_b.ids("tasks", *NATIVE)
        assert _ids(_from(answer, fed.to_a.name)) == _a_visible(fed, "tasks")
        assert _from(answer, hung.name) == []
    finally:
        retire_connection(fed.b, hung.name)


def test_a_closed_port_fails_fast_as_peer_unreachable(fed: Federation) -> None:
    gone = fed.enroll("gone")
    redirect_connection(fed.b, gone.name, closed_port_url(host(252)))
    try:
        answer, elapsed = fed.api.timed("tasks", source=f"federated:{gone.name}")
        assert answer["errors"] == [
            {"source": f"federated:{gone.name}", "code": "peer_unreachable"}
        ]
        assert answer["_partial"] is True
        assert answer["items"] == []
        assert elapsed < SOURCE_TIMEOUT  # refused connections: a few jittered retries, no wait
    finally:
        retire_connection(fed.b, gone.name)


def test_the_circuit_opens_after_repeated_failures_and_then_costs_nothing(
    fed: Federation, dead: Enrolled
) -> None:
    source = f"federated:{dead.name}"
    codes = []
    for _ in range(CIRCUIT_THRESHOLD + 1):
        answer, elapsed = fed.api.timed("tasks", source=source)
        codes.append(_error(answer, source))
        assert elapsed < SOURCE_TIMEOUT + 0.2
        if codes[-1] == "circuit_open":
            break
    assert len(codes) == CIRCUIT_THRESHOLD + 1
    assert set(codes[:-1]) <= DOWN_CODES
    assert codes[-1] == "circuit_open"

    # Open: the dead peer is not even tried; the fan-out answers at the healthy sources' pace.
    answer, elapsed = fed.api.timed("tasks", source="all", limit=50)
    assert _error(answer, source) == "circuit_open"
    assert answer["_partial"] is True
    assert elapsed < SOURCE_TIMEOUT / 2
    assert _ids(_from(answer, fed.to_a.name)) == _a_visible(fed, "tasks")

    # Visible to the operator: CIRCUIT column and the JSON record.
    table = mosaic("federation", "connection", "list", "--state", "active", gateway=fed.b)
    assert table.returncode == 0, table.stderr
    assert "CIRCUIT" in table.stdout
    [dead_line] = [line for line in table.stdout.splitlines() if f" {dead.name} " in line]
    assert dead_line.rstrip().endswith("open")
    [healthy_line] = [line for line in table.stdout.splitlines() if f" {fed.to_a.name} " in line]
    assert healthy_line.rstrip().endswith("closed")
    listed = mosaic_json("federation", "connection", "list", "--state", "active", gateway=fed.b)
    [record] = [c for c in listed["items"] if c["name"] == dead.name]
    assert record["circuit"]["state"] == "open"
    assert record["circuit"]["last_failure_code"] in DOWN_CODES

    # The circuits endpoint is for admins only.
    refused = httpx.get(
        f"{fed.b.admin_url}/api/local/v1/circuits",
        headers={"Authorization": f"Bearer {fed.api.token}"},
        timeout=10,
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "admin_role_required"


# ------------------------------------------------------------------------------ revocation


def test_revocation_on_a_shows_as_as_error_on_b_next_query(fed: Federation) -> None:
    revoked = fed.enroll("rev")
    source = f"federated:{revoked.name}"
    try:
        before = fed.api.query("tasks", source=source, limit=50)
        assert _ids(before["items"]) == _a_visible(fed, "tasks")

        result = mosaic_json(
            "federation", "grant", "revoke", revoked.grant["id"], "--reason", "test", gateway=fed.a
        )
        assert result["status"] == "revoked"

        after = fed.api.query("tasks", source=source, limit=50)
        assert after["items"] == []
        assert after["_partial"] is True
        assert _error(after, source) in REVOKED_CODES
        # A refusal is an answer from a live peer: it never opens the circuit, so B keeps
        # seeing A's own code.
        for _ in range(CIRCUIT_THRESHOLD + 1):
            again = fed.api.query("tasks", source=source)
            assert _error(again, source) in REVOKED_CODES
        # The other sources are untouched.
        everything = fed.api.query("tasks", source="all", limit=50)
        assert _error(everything, source) in REVOKED_CODES
        assert _ids(_from(everything, fed.to_a.name)) == _a_visible(fed, "tasks")
        assert _ids(_from(everything, None)) == fed.world_b.ids("tasks", *NATIVE)
    finally:
        retire_connection(fed.b, revoked.name)


# ------------------------------------------------------------------------------ benchmark


def test_fanout_latency_with_1_3_and_5_connections_one_dead(
    fed: Federation, dead: Enrolled, record_property: Any
) -> None:
    """Median latency of `source=all` (local + N connections, one of them dead with its
    circuit open) against a single local query, measured in the same run."""
    extra = [fed.enroll(f"bench{i}") for i in range(3)]
    healthy = [fed.to_a.name, *(e.name for e in extra)]
    saved = fetch_all(fed.b.database_url, "SELECT name, state::text FROM federation_connections")
    # Open the dead connection's circuit (steady state: a known-dead peer).
    for _ in range(CIRCUIT_THRESHOLD + 1):
        fed.api.query("tasks", source=f"federated:{dead.name}")

    def median_ms(**body: Any) -> float:
        fed.api.query("tasks", **body)  # warm: clients and TLS sessions
        samples = [fed.api.timed("tasks", **body)[1] for _ in range(15)]
        return statistics.median(samples) * 1000

    results: dict[str, float] = {}
    try:
        local = median_ms(source="local")
        results["local"] = local
        for count in (1, 3, 5):
            active = [dead.name, *healthy[: count - 1]]
            fetch_all(
                fed.b.database_url,
                "UPDATE federation_connections SET state = CASE WHEN name = ANY(%s) "
                "THEN 'active'::connection_state ELSE 'revoked'::connection_state END "
                "RETURNING id",
                (active,),
            )
            answer = fed.api.query("tasks", source="all")
            assert len(answer["sources"]) == count + 1
            assert _error(answer, f"federated:{dead.name}") == "circuit_open"
            results[f"{count} connections"] = median_ms(source="all")
    finally:
        for name, state in saved:
            fetch_all(
                fed.b.database_url,
                "UPDATE federation_connections SET state = %s::connection_state "
                "WHERE name = %s RETURNING id",
                (state, name),
            )
        for enrolled in extra:
            retire_connection(fed.b, enrolled.name)
    for label, value in results.items():
        record_property(f"fanout_median_ms[{label}]", round(value, 2))
        print(f"fan-out median, {label}: {value:.1f} ms ({value / local:.2f}x local)")
    assert results["5 connections"] < SOURCE_TIMEOUT * 1000 / 2


# ------------------------------------------------------------------------------ no persistence


def test_nothing_received_from_a_peer_is_stored_on_b(fed: Federation) -> None:
    answer = fed.api.query("notes", source="all", limit=50)
    received = _from(answer, fed.to_a.name)
    assert any(fed.marker in item["title"] for item in received)  # B did receive them
    received_ids = [item["id"] for item in received]

    # Every table of B's database, every row as text.
    tables = [
        row[0]
        for row in fetch_all(
            fed.b.database_url,
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
        )
    ]
    assert "federation_audit_log" in tables
    for table in tables:
        hits = fetch_one(
            fed.b.database_url,
            f'SELECT count(*) FROM "{table}" t WHERE t::text LIKE %s',  # noqa: S608
            (f"%{fed.marker}%",),
        )[0]
        assert hits == 0, table
        for row_id in received_ids[:5]:
            assert (
                fetch_one(
                    fed.b.database_url,
                    f'SELECT count(*) FROM "{table}" t WHERE t::text LIKE %s',  # noqa: S608
                    (f"%{row_id}%",),
                )[0]
                == 0
            ), table

    # Every file under B's state folder (its Postgres cluster and WAL, logs, nginx, PKI).
    _checkpoint(fed.b)  # whatever B wrote is in its files now, not only in memory
    needles = [fed.marker.encode(), *(row_id.encode() for row_id in received_ids[:5])]
    scanned = 0
    for path in fed.b.spec.state_dir.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        scanned += 1
        for needle in needles:
            assert needle not in data, (path, needle)
    assert scanned > 50

    # The audit keeps metadata only: who, what, outcome, per-source summary, a count.
    rows = fetch_all(
        fed.b.database_url,
        "SELECT outcome::text, reason_code, row_count FROM federation_audit_log "
        "WHERE action = 'local.query' AND outcome = 'allowed' ORDER BY id DESC LIMIT 1",
    )
    [(outcome, reason, row_count)] = rows
    assert outcome == "allowed"
    assert reason.startswith(("complete:", "partial:"))
    assert row_count == len(answer["items"])


def test_audit_rows_written_per_query(fed: Federation) -> None:
    before = int(
        fetch_one(
            fed.b.database_url,
            "SELECT count(*) FROM federation_audit_log WHERE action = 'local.query'",
        )[0]
    )
    fed.api.query("tasks", source="local")
    time.sleep(0.05)
    after = int(
        fetch_one(
            fed.b.database_url,
            "SELECT count(*) FROM federation_audit_log WHERE action = 'local.query'",
        )[0]
    )
    assert after == before + 1
