"""The certificate-binding cache (verbs.binding_cache) against a real Postgres: a write to any
table a binding is read from empties it (migration 0003's triggers → NOTIFY → the listener), a
read that overlaps a change is never kept, nothing is served while the listener is down, and no
entry outlives its age limit."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from psycopg import AsyncConnection
from pydantic import SecretStr

from fedcore.db import connect_raw
from fedcore.models import GrantStatus, PeerState
from fedcore.settings import PostgresSettings
from tests.support.db import execute, fetch_all
from verbs.binding_cache import BindingCache
from verbs.reads import CertificateBinding

BINDING = CertificateBinding(
    fingerprint_sha256="ab" * 32,
    revoked_at=None,
    cert_peer_id=uuid.uuid4(),
    grant_id=uuid.uuid4(),
    grant_subject_user_id=uuid.uuid4(),
    grant_peer_id=uuid.uuid4(),
    grant_status=GrantStatus.ACTIVE,
    grant_expires_at=None,
    peer_state=PeerState.ACTIVE,
    peer_name="peer",
    subject_team_ids=frozenset(),
    grant_scope=None,
)
# A write that changes no row still fires the statement-level triggers (and so must invalidate).
WRITES = {
    "federation_certificates": "UPDATE federation_certificates SET revoked_at = now() WHERE false",
    "federation_grants": "UPDATE federation_grants SET status = 'revoked' WHERE false",
    "federation_peers": "DELETE FROM federation_peers WHERE false",
    "team_members": "INSERT INTO team_members (team_id, user_id) SELECT id, id FROM teams "
    "WHERE false",
    "team_members (truncate)": "TRUNCATE team_members",
}


async def eventually(condition: Callable[[], bool], seconds: float = 5.0) -> float:
    """Wait until ``condition()``; return how long it took (fails after ``seconds``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "condition not reached in time"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


@pytest.fixture
async def cache(migrated_db_url: str) -> AsyncIterator[BindingCache]:
    settings = PostgresSettings(url=SecretStr(migrated_db_url))
    bindings = BindingCache(
        lambda: connect_raw(settings),
        max_age_seconds=60,
        health_check_seconds=0.5,
        retry_seconds=0.1,
    )
    bindings.start()
    await eventually(lambda: bindings.listening)
    try:
        yield bindings
    finally:
        await bindings.stop()


def keep(cache: BindingCache, serial: str = "01") -> None:
    token = cache.begin_read()
    assert token is not None
    cache.store(serial, BINDING, token)
    assert cache.get(serial) is BINDING


@pytest.mark.parametrize("table", sorted(WRITES))
async def test_any_write_to_a_binding_table_empties_the_cache(
    cache: BindingCache, migrated_db_url: str, table: str
) -> None:
    keep(cache)
    execute(migrated_db_url, WRITES[table])
    took = await eventually(lambda: cache.get("01") is None, seconds=2)
    assert took < 1.0  # a notification, not the age limit (60 s here)


async def test_other_writes_leave_the_cache_alone(
    cache: BindingCache, migrated_db_url: str
) -> None:
    keep(cache)
    execute(migrated_db_url, "UPDATE federation_audit_log SET row_count = 0 WHERE false")
    execute(migrated_db_url, "UPDATE tasks SET title = title WHERE false")
    await asyncio.sleep(0.3)
    assert cache.get("01") is BINDING


async def test_a_read_that_overlaps_a_change_is_not_kept(
    cache: BindingCache, migrated_db_url: str
) -> None:
    token = cache.begin_read()  # the read starts (and may see the old state) ...
    assert token is not None
    keep(cache, "sentinel")
    execute(migrated_db_url, WRITES["federation_grants"])  # ... a change commits ...
    await eventually(lambda: cache.get("sentinel") is None)  # ... and is announced
    cache.store("01", BINDING, token)  # the read ends: too late to be kept
    assert cache.get("01") is None


async def test_nothing_is_served_while_the_listener_is_down(
    cache: BindingCache, migrated_db_url: str
) -> None:
    keep(cache)
    [(killed,)] = fetch_all(
        migrated_db_url,
        # This test's database: its only other connection is the cache's listener.
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    assert killed >= 1
    await eventually(lambda: not cache.listening)
    assert cache.get("01") is None
    assert cache.begin_read() is None  # no new entries either
    await eventually(lambda: cache.listening)  # reconnected
    keep(cache)


async def test_no_entry_outlives_its_age_limit() -> None:
    now = [100.0]
    bindings = BindingCache(_never_connects, max_age_seconds=0.5, clock=lambda: now[0])
    bindings._listening = True  # as if listening (no database needed for the clock rule)
    token = bindings.begin_read()
    assert token is not None
    now[0] += 0.2  # the read took a while: the age counts from its start
    bindings.store("01", BINDING, token)
    now[0] += 0.29
    assert bindings.get("01") is BINDING
    now[0] += 0.01
    assert bindings.get("01") is None


async def _never_connects() -> AsyncConnection[Any]:
    raise AssertionError("not used")


@pytest.mark.parametrize("alter", ["DISABLE TRIGGER", "ENABLE REPLICA TRIGGER"])
async def test_the_cache_stays_off_without_all_its_triggers(
    migrated_db_url: str, alter: str
) -> None:
    """A disabled (or replica-only, or missing) trigger would let a change go unannounced."""
    execute(migrated_db_url, f"ALTER TABLE team_members {alter} team_members_binding_changed")
    settings = PostgresSettings(url=SecretStr(migrated_db_url))
    bindings = BindingCache(lambda: connect_raw(settings), max_age_seconds=60, retry_seconds=0.05)
    bindings.start()
    try:
        await asyncio.sleep(0.5)  # several attempts
        assert not bindings.listening
        assert bindings.begin_read() is None
    finally:
        await bindings.stop()
    execute(migrated_db_url, "ALTER TABLE team_members ENABLE TRIGGER team_members_binding_changed")
    bindings.start()
    try:
        await eventually(lambda: bindings.listening)
    finally:
        await bindings.stop()


async def test_a_trigger_disabled_while_listening_turns_the_cache_off(
    cache: BindingCache, migrated_db_url: str
) -> None:
    keep(cache)
    execute(
        migrated_db_url,
        "ALTER TABLE federation_grants DISABLE TRIGGER federation_grants_binding_changed",
    )
    try:
        await eventually(lambda: not cache.listening, seconds=3)  # the next health check
        assert cache.get("01") is None
    finally:
        execute(
            migrated_db_url,
            "ALTER TABLE federation_grants ENABLE TRIGGER federation_grants_binding_changed",
        )
