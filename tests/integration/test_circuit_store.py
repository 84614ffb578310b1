"""The circuit breakers' shared store (verbs.circuit.CircuitBreakers) on a real Postgres: what a
second worker (another process, another replica) sees, and that exactly one of many concurrent
callers gets the half-open probe."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from tests.support.db import execute, fetch_all
from tests.support.factories import insert_connection
from verbs.circuit import CircuitBreakers, CircuitPolicy, CircuitRecord, CircuitState

POLICY = CircuitPolicy(threshold=3, cooldown_seconds=30, probe_timeout_seconds=10)
Pool = AsyncConnectionPool[AsyncConnection[Any]]


@pytest.fixture
def pool(raw_pool: Pool) -> Pool:
    return raw_pool


def read(url: str, connection_id: uuid.UUID) -> tuple[CircuitRecord, Any]:
    """The circuit as the fan-out reads it: the row (or none) and the database's clock."""
    [(failures, code, opened_at, probe_at, now)] = fetch_all(
        url,
        "SELECT f.consecutive_failures, f.last_failure_code, f.opened_at, f.probe_started_at, "
        "now() FROM federation_connections c "
        "LEFT JOIN federation_circuits f ON f.connection_id = c.id WHERE c.id = %s",
        (connection_id,),
    )
    return CircuitRecord(failures or 0, code, opened_at, probe_at), now


def age_opening(url: str, connection_id: uuid.UUID, seconds: float) -> None:
    """Move the opening back in time (instead of sleeping through a cool-down)."""
    execute(
        url,
        "UPDATE federation_circuits SET opened_at = opened_at - make_interval(secs => %s), "
        "probe_started_at = probe_started_at - make_interval(secs => %s) "
        "WHERE connection_id = %s",
        (seconds, seconds, connection_id),
    )


async def test_consecutive_failures_open_the_circuit_for_every_worker(
    migrated_db_url: str, pool: Pool
) -> None:
    url = migrated_db_url
    one, other = insert_connection(url, name="one"), insert_connection(url, name="other")
    worker_a = CircuitBreakers(pool, POLICY)
    worker_b = CircuitBreakers(pool, POLICY)  # same store: what another process does

    await worker_a.record_failure(one, "peer_timeout")
    await worker_b.record_failure(one, "peer_timeout")
    record, now = read(url, one)
    assert record.state(now, POLICY) is CircuitState.CLOSED
    assert record.consecutive_failures == 2
    await worker_a.record_success(one, record)  # not consecutive any more
    record, now = read(url, one)
    assert record.clean

    for worker in (worker_a, worker_b, worker_a):
        await worker.record_failure(one, "peer_unreachable")
    record, now = read(url, one)
    assert record.state(now, POLICY) is CircuitState.OPEN
    assert await worker_b.acquire(one, record, now) is None  # inside the cool-down
    untouched, now = read(url, other)
    assert (await worker_b.acquire(other, untouched, now)) is not None

    [snapshot] = await worker_b.snapshot()
    assert snapshot["name"] == "one"
    assert snapshot["state"] == "open"
    assert snapshot["consecutive_failures"] == 3
    assert snapshot["last_failure_code"] == "peer_unreachable"
    assert snapshot["probe_after"] is not None


async def test_exactly_one_of_many_concurrent_callers_gets_the_probe(
    migrated_db_url: str, pool: Pool
) -> None:
    url = migrated_db_url
    connection_id = insert_connection(url, name="dead")
    breakers = [CircuitBreakers(pool, POLICY) for _ in range(3)]
    for _ in range(POLICY.threshold):
        await breakers[0].record_failure(connection_id, "peer_timeout")
    age_opening(url, connection_id, POLICY.cooldown_seconds)
    record, now = read(url, connection_id)
    assert record.may_probe(now, POLICY)

    permits = await asyncio.gather(
        *(breakers[i % 3].acquire(connection_id, record, now) for i in range(12))
    )
    granted = [p for p in permits if p is not None]
    assert len(granted) == 1
    assert granted[0].probe
    after, now = read(url, connection_id)
    assert after.state(now, POLICY) is CircuitState.HALF_OPEN
    # Callers that read the circuit after the claim do not even try.
    assert not after.may_probe(now, POLICY)
    assert await breakers[1].acquire(connection_id, after, now) is None


async def test_probe_outcomes_failure_reopens_success_closes_release_returns_it(
    migrated_db_url: str, pool: Pool
) -> None:
    url = migrated_db_url
    connection_id = insert_connection(url, name="flaky")
    store = CircuitBreakers(pool, POLICY)
    for _ in range(POLICY.threshold):
        await store.record_failure(connection_id, "peer_timeout")
    opened = read(url, connection_id)[0].opened_at

    # A failed probe re-opens for a new cool-down.
    age_opening(url, connection_id, POLICY.cooldown_seconds)
    record, now = read(url, connection_id)
    permit = await store.acquire(connection_id, record, now)
    assert permit is not None
    assert permit.probe
    await store.record_failure(connection_id, "peer_unreachable")
    reopened, now = read(url, connection_id)
    assert reopened.state(now, POLICY) is CircuitState.OPEN
    assert reopened.opened_at is not None
    assert opened is not None
    assert reopened.opened_at >= opened  # a fresh opening, not the aged one
    assert reopened.probe_started_at is None
    assert not reopened.may_probe(now, POLICY)

    # A released probe (the call said nothing about the peer) goes back unchanged.
    age_opening(url, connection_id, POLICY.cooldown_seconds)
    record, now = read(url, connection_id)
    permit = await store.acquire(connection_id, record, now)
    assert permit is not None
    await store.release(connection_id, permit)
    released, now = read(url, connection_id)
    assert released.state(now, POLICY) is CircuitState.OPEN
    assert released.consecutive_failures == record.consecutive_failures
    assert released.may_probe(now, POLICY)

    # A successful probe closes it for everyone.
    permit = await store.acquire(connection_id, released, now)
    assert permit is not None
    await store.record_success(connection_id, released)
    closed, now = read(url, connection_id)
    assert closed.clean
    assert closed.state(now, POLICY) is CircuitState.CLOSED


async def test_a_probe_whose_worker_died_expires(migrated_db_url: str, pool: Pool) -> None:
    url = migrated_db_url
    connection_id = insert_connection(url, name="orphan")
    store = CircuitBreakers(pool, POLICY)
    for _ in range(POLICY.threshold):
        await store.record_failure(connection_id, "peer_timeout")
    age_opening(url, connection_id, POLICY.cooldown_seconds)
    record, now = read(url, connection_id)
    assert await store.acquire(connection_id, record, now) is not None  # then never reports
    held, now = read(url, connection_id)
    assert await store.acquire(connection_id, held, now) is None
    # Claimed longer ago than the probe timeout: the next caller may probe again.
    execute(
        url,
        "UPDATE federation_circuits SET probe_started_at = now() - make_interval(secs => %s) "
        "WHERE connection_id = %s",
        (POLICY.probe_timeout_seconds + 1, connection_id),
    )
    expired, now = read(url, connection_id)
    assert expired.may_probe(now, POLICY)
    assert await store.acquire(connection_id, expired, now) is not None


async def test_the_circuit_goes_with_its_connection(migrated_db_url: str, pool: Pool) -> None:
    url = migrated_db_url
    connection_id = insert_connection(url, name="gone")
    await CircuitBreakers(pool, POLICY).record_failure(connection_id, "peer_timeout")
    execute(url, "DELETE FROM federation_connections WHERE id = %s", (connection_id,))
    assert fetch_all(url, "SELECT count(*) FROM federation_circuits") == [(0,)]


async def test_a_failed_circuit_statement_never_fails_the_query(
    migrated_db_url: str, pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    """E.g. the connection was deleted while its fan-out call was out: the foreign key refuses
    the failure record; the fan-out must still answer (partial), so nothing is raised."""
    store = CircuitBreakers(pool, POLICY)
    await store.record_failure(uuid.uuid4(), "peer_timeout")  # no such connection
    assert fetch_all(migrated_db_url, "SELECT count(*) FROM federation_circuits") == [(0,)]
    assert any(r.message == "circuit state not updated" for r in caplog.records)
