"""Certificate renewal between two launcher gateways: B renews a connection's certificate at A
(`POST /api/federation/v1/renew` over mTLS with the current certificate, signed by A's ca-broker
for the same grant), stores it after its checks, and keeps querying; the bound on live
certificates, a revoked grant and a bad CSR are refused with their codes and change nothing;
the scheduler renews what is due at 2/3 of the lifetime."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from fedcore import pki
from fedcore.dev_seed import SeededWorld
from fedcore.federation_client import ConnectionMaterial, FederationClient, PeerRefused
from fedcore.models import FederationConnection
from fedcore.sealing import Sealer
from grants.renewal import renew_due_connections
from grants.settings import Settings as GrantsSettings
from tests.support.cli import mosaic, mosaic_json, refused
from tests.support.db import fetch_all, fetch_one
from tests.support.fanout import Enrolled, LocalApi, enroll_b_at_a, retire_connection, user_token
from tests.support.federation import seed_world
from tests.support.stack import Gateway

REVOKED_CODES = {"grant_revoked", "client_cert_revoked", "client_cert_invalid"}


@pytest.fixture(scope="module")
async def world(gateway_a: Gateway) -> SeededWorld:
    return await seed_world(gateway_a.database_url)


@pytest.fixture(scope="module")
async def b_api(gateway_b: Gateway) -> AsyncIterator[LocalApi]:
    world_b = await seed_world(gateway_b.database_url)
    api = LocalApi(gateway_b, user_token(gateway_b, world_b.users["alice"]))
    try:
        yield api
    finally:
        api.close()


def _enroll(a: Gateway, b: Gateway, world: SeededWorld, folder: Path, prefix: str) -> Enrolled:
    scope = {"resources": ["tasks"], "include_personal": True, "max_rows_per_query": 20}
    return enroll_b_at_a(a, b, world.users["alice"], scope, folder, prefix)


def _connection(b: Gateway, name: str) -> tuple[Any, ...]:
    return fetch_one(
        b.database_url,
        "SELECT cert_serial, cert_not_after, sealed_private_key, cert_pem, state::text "
        "FROM federation_connections WHERE name = %s",
        (name,),
    )


def _certificates(a: Gateway, grant_id: str) -> list[tuple[Any, ...]]:
    return fetch_all(
        a.database_url,
        "SELECT serial, revoked_at FROM federation_certificates WHERE grant_id = %s "
        "ORDER BY created_at",
        (grant_id,),
    )


def _secrets(gateway: Gateway) -> dict[str, str]:
    loaded: dict[str, str] = json.loads((gateway.spec.state_dir / "secrets.json").read_text())
    return loaded


async def _material(b: Gateway, name: str) -> ConnectionMaterial:
    engine = create_async_engine(b.database_url)
    try:
        async with async_sessionmaker(engine)() as session:
            row = (
                await session.execute(
                    select(FederationConnection).where(FederationConnection.name == name)
                )
            ).scalar_one()
            return ConnectionMaterial.from_row(row)
    finally:
        await engine.dispose()


async def test_b_renews_at_a_and_keeps_querying(
    gateway_a: Gateway,
    gateway_b: Gateway,
    world: SeededWorld,
    b_api: LocalApi,
    tmp_path: Path,
) -> None:
    enrolled = _enroll(gateway_a, gateway_b, world, tmp_path, "renew")
    source = f"federated:{enrolled.name}"
    assert b_api.query("tasks", source=source)["errors"] == []
    old = await _material(gateway_b, enrolled.name)
    old_serial, old_not_after, old_key, _, _ = _connection(gateway_b, enrolled.name)

    renewed = mosaic_json(
        "federation", "connection", "renew", enrolled.connection["id"], gateway=gateway_b
    )
    assert renewed["state"] == "active"
    assert renewed["cert_serial"] != old_serial
    assert renewed["remote_grant_id"] == enrolled.grant["id"]
    new_serial, new_not_after, new_key, new_pem, _ = _connection(gateway_b, enrolled.name)
    assert new_serial == renewed["cert_serial"]
    assert new_not_after >= old_not_after
    assert bytes(new_key) != bytes(old_key)  # a new key pair, sealed
    assert bytes(new_key).startswith(b"MSL1")
    leaf = pki.load_pem_chain(new_pem)[0]
    assert leaf.subject.rfc4514_string() == f"CN={enrolled.peer['name']}"

    # A recorded it for the same grant and moved the peer's current certificate.
    serials = [serial for serial, _ in _certificates(gateway_a, enrolled.grant["id"])]
    assert serials == [old_serial, new_serial]
    assert fetch_one(
        gateway_a.database_url,
        "SELECT cert_serial FROM federation_peers WHERE id = %s",
        (enrolled.peer["id"],),
    ) == (new_serial,)
    # B's verbs notice the new certificate (their client cache rebuilds) and keep answering.
    answer = b_api.query("tasks", source=source)
    assert answer["errors"] == []
    assert {i["_source"] for i in answer["items"]} == {gateway_a.name}
    # The old certificate keeps working until it expires (calls in flight are not cut).
    async with FederationClient.create(old, Sealer(_secrets(gateway_b)["gateway_secret"])) as c:
        assert (await c.capabilities()).grant_id == enrolled.grant["id"]
    # Audited on both sides.
    assert fetch_all(
        gateway_b.database_url,
        "SELECT outcome::text FROM federation_audit_log WHERE action = 'connection.renew' "
        "AND target_id = %s",
        (enrolled.connection["id"],),
    ) == [("allowed",)]
    assert ("allowed",) in fetch_all(
        gateway_a.database_url,
        "SELECT outcome::text FROM federation_audit_log WHERE action = 'verb.renew' "
        "AND grant_id = %s",
        (enrolled.grant["id"],),
    )

    # The bound: a grant has at most 3 live certificates; the 4th is refused, nothing changes.
    mosaic_json("federation", "connection", "renew", enrolled.connection["id"], gateway=gateway_b)
    before_b = _connection(gateway_b, enrolled.name)
    before_a = _certificates(gateway_a, enrolled.grant["id"])
    assert len(before_a) == 3
    result = mosaic(
        "federation", "connection", "renew", enrolled.connection["id"], gateway=gateway_b
    )
    refused(result, "too_many_certificates")
    assert _connection(gateway_b, enrolled.name) == before_b
    assert _certificates(gateway_a, enrolled.grant["id"]) == before_a
    retire_connection(gateway_b, enrolled.name)


async def test_a_revoked_grant_cannot_renew_and_nothing_changes(
    gateway_a: Gateway, gateway_b: Gateway, world: SeededWorld, tmp_path: Path
) -> None:
    enrolled = _enroll(gateway_a, gateway_b, world, tmp_path, "norenew")
    mosaic_json("federation", "grant", "revoke", enrolled.grant["id"], gateway=gateway_a)
    before_b = _connection(gateway_b, enrolled.name)
    before_a = _certificates(gateway_a, enrolled.grant["id"])
    result = mosaic(
        "federation", "connection", "renew", enrolled.connection["id"], gateway=gateway_b
    )
    assert result.returncode == 1, result.stderr
    assert any(f"error: {code}:" in result.stderr for code in REVOKED_CODES), result.stderr
    assert _connection(gateway_b, enrolled.name) == before_b
    assert _certificates(gateway_a, enrolled.grant["id"]) == before_a
    assert all(revoked_at is not None for _, revoked_at in before_a)
    retire_connection(gateway_b, enrolled.name)


async def test_a_bad_csr_is_refused_by_the_ca_and_no_certificate_is_issued(
    gateway_a: Gateway, gateway_b: Gateway, world: SeededWorld, tmp_path: Path
) -> None:
    enrolled = _enroll(gateway_a, gateway_b, world, tmp_path, "badcsr")
    material = await _material(gateway_b, enrolled.name)
    before = _certificates(gateway_a, enrolled.grant["id"])
    sealer = Sealer(_secrets(gateway_b)["gateway_secret"])
    async with FederationClient.create(material, sealer) as client:
        with pytest.raises(PeerRefused) as info:
            await client.renew("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
        assert (info.value.status, info.value.code) == (400, "invalid_csr")
        with pytest.raises(PeerRefused) as empty:
            await client.renew("")
        assert (empty.value.status, empty.value.code) == (422, "validation_error")
    assert _certificates(gateway_a, enrolled.grant["id"]) == before
    retire_connection(gateway_b, enrolled.name)


async def test_the_scheduler_renews_at_two_thirds_of_the_lifetime(
    gateway_a: Gateway, gateway_b: Gateway, world: SeededWorld, tmp_path: Path
) -> None:
    """The grants service's renewal pass (the same function its background task runs), run here
    with B's settings and a chosen clock, restricted to this test's connection."""
    enrolled = _enroll(gateway_a, gateway_b, world, tmp_path, "sched")
    connection_id = uuid.UUID(enrolled.connection["id"])
    leaf = pki.load_pem_chain(_connection(gateway_b, enrolled.name)[3])[0]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    secrets = _secrets(gateway_b)
    settings = GrantsSettings(
        db={"url": gateway_b.database_url},
        secrets={
            "gateway_secret": secrets["gateway_secret"],
            "proxy_secret": secrets["proxy_secret"],
            "service_token": secrets["service_token"],
        },
    )
    engine = create_async_engine(gateway_b.database_url)
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    try:
        early = leaf.not_valid_before_utc + lifetime * 0.6
        assert await renew_due_connections(sessionmaker, settings, early, [connection_id]) == {}
        assert _connection(gateway_b, enrolled.name)[0] == pki.serial_hex(leaf)

        due = leaf.not_valid_before_utc + lifetime * (2 / 3) + timedelta(seconds=1)
        result = await renew_due_connections(sessionmaker, settings, due, [connection_id])
        assert result == {enrolled.name: "renewed"}
        assert _connection(gateway_b, enrolled.name)[0] != pki.serial_hex(leaf)
        assert fetch_all(
            gateway_b.database_url,
            "SELECT actor_type::text, outcome::text FROM federation_audit_log "
            "WHERE action = 'connection.renew' AND target_id = %s",
            (str(connection_id),),
        ) == [("system", "allowed")]
    finally:
        await engine.dispose()
        retire_connection(gateway_b, enrolled.name)
