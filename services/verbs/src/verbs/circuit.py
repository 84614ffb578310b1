"""A circuit breaker per outbound connection: a known-dead peer costs the fan-out nothing.

States::

    closed ──(threshold consecutive failures)──► open ──(cool-down elapsed)──► half_open
      ▲                                            ▲                               │
      └──────────────── probe succeeds ────────────┼───────── probe fails ─────────┘

* ``closed``: every call goes out; a success resets the failure count.
* ``open``: no call goes out; the fan-out reports ``circuit_open`` for the connection at once.
* ``half_open``: after the cool-down exactly one call (the probe) goes out; every other call
  meanwhile is still ``circuit_open``. The probe's outcome closes or re-opens the circuit.

What counts as a failure: the peer could not be reached, timed out, broke the protocol, or its
gateway answered 5xx. A 4xx refusal (``grant_revoked``, ``resource_not_in_scope``, …) is an
answer from a live peer and counts as a success: the breaker is about reachability, and the
caller must keep seeing the peer's own refusal code.

The state is a row per connection in ``federation_circuits``, shared by every verbs worker and
replica, so the gateway learns a dead peer once and every worker skips it (and the operator sees
one answer in ``mosaic federation connection list``). Times are the database's clock, so workers
on different hosts agree. The steady state costs nothing extra: the fan-out reads each
connection's circuit with the connection row (one statement) and decides in Python; a statement
is sent only when something changes (a failure, the first success after failures, a probe
claim). The half-open probe is claimed with a conditional ``UPDATE``, so exactly one worker gets
it; a claim whose worker died expires after ``probe_timeout_seconds``.
"""

from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("verbs.circuit")


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class CircuitPolicy:
    threshold: int
    cooldown_seconds: float
    probe_timeout_seconds: float

    @property
    def cooldown(self) -> timedelta:
        return timedelta(seconds=self.cooldown_seconds)

    @property
    def probe_timeout(self) -> timedelta:
        return timedelta(seconds=self.probe_timeout_seconds)


@dataclass(frozen=True)
class CircuitRecord:
    """One connection's circuit as read (no row reads as a closed circuit)."""

    consecutive_failures: int = 0
    last_failure_code: str | None = None
    opened_at: datetime | None = None
    probe_started_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> CircuitRecord:
        """From a connection row joined with its circuit (``circuit_*`` columns)."""
        return cls(
            consecutive_failures=row.circuit_failures or 0,
            last_failure_code=row.circuit_last_failure_code,
            opened_at=row.circuit_opened_at,
            probe_started_at=row.circuit_probe_started_at,
        )

    @property
    def clean(self) -> bool:
        """Closed with no failure counted: a success changes nothing."""
        return self.opened_at is None and self.consecutive_failures == 0

    def probe_out(self, now: datetime, policy: CircuitPolicy) -> bool:
        return (
            self.opened_at is not None
            and self.probe_started_at is not None
            and self.probe_started_at >= self.opened_at
            and now - self.probe_started_at < policy.probe_timeout
        )

    def state(self, now: datetime, policy: CircuitPolicy) -> CircuitState:
        if self.opened_at is None:
            return CircuitState.CLOSED
        return CircuitState.HALF_OPEN if self.probe_out(now, policy) else CircuitState.OPEN

    def may_probe(self, now: datetime, policy: CircuitPolicy) -> bool:
        """Open, cooled down, no live probe out: the next caller may try to claim the probe."""
        return (
            self.opened_at is not None
            and now - self.opened_at >= policy.cooldown
            and not self.probe_out(now, policy)
        )

    def snapshot(self, now: datetime, policy: CircuitPolicy) -> dict[str, Any]:
        state = self.state(now, policy)
        return {
            "state": state.value,
            "consecutive_failures": self.consecutive_failures,
            "last_failure_code": self.last_failure_code,
            "opened_at": self.opened_at,
            "probe_after": self.opened_at + policy.cooldown
            if state is CircuitState.OPEN and self.opened_at is not None
            else None,
        }


@dataclass(frozen=True)
class Permit:
    """A call may go out; ``probe`` says whether it is the half-open probe."""

    probe: bool


# The statements. Parameters only; the threshold and intervals are parameters too.
_CLAIM_PROBE = """
UPDATE federation_circuits SET probe_started_at = now(), updated_at = now()
 WHERE connection_id = %(id)s
   AND opened_at IS NOT NULL
   AND opened_at <= now() - %(cooldown)s
   AND (probe_started_at IS NULL OR probe_started_at < opened_at
        OR probe_started_at <= now() - %(probe_timeout)s)
RETURNING connection_id
"""
_RECORD_FAILURE = """
INSERT INTO federation_circuits AS c
       (connection_id, consecutive_failures, last_failure_code, opened_at, updated_at)
VALUES (%(id)s, 1, %(code)s, CASE WHEN %(threshold)s <= 1 THEN now() END, now())
ON CONFLICT (connection_id) DO UPDATE SET
       consecutive_failures = c.consecutive_failures + 1,
       last_failure_code = EXCLUDED.last_failure_code,
       -- A failure while open (the probe, or a call that left before it opened) re-opens it.
       opened_at = CASE WHEN c.opened_at IS NOT NULL
                          OR c.consecutive_failures + 1 >= %(threshold)s
                        THEN now() END,
       probe_started_at = NULL,
       updated_at = now()
"""
_RECORD_SUCCESS = """
UPDATE federation_circuits
   SET consecutive_failures = 0, last_failure_code = NULL, opened_at = NULL,
       probe_started_at = NULL, updated_at = now()
 WHERE connection_id = %(id)s
"""
_RELEASE_PROBE = """
UPDATE federation_circuits SET probe_started_at = NULL, updated_at = now()
 WHERE connection_id = %(id)s AND probe_started_at IS NOT NULL
"""
_SNAPSHOT = """
SELECT f.connection_id, c.name, f.consecutive_failures, f.last_failure_code, f.opened_at,
       f.probe_started_at, now()
  FROM federation_circuits f JOIN federation_connections c ON c.id = f.connection_id
 ORDER BY c.name
"""


class CircuitBreakers:
    """The circuits of every connection, kept in Postgres (autocommit statements on ``pool``).

    A failed circuit statement never fails the query it serves (a fan-out answers partial, not
    500): it is logged and counts as "no change" — a probe that could not be claimed stays
    ``circuit_open``, an outcome that could not be recorded is recorded by a later call."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]], policy: CircuitPolicy):
        self.pool = pool
        self.policy = policy

    async def acquire(
        self, connection_id: uuid.UUID, record: CircuitRecord, now: datetime
    ) -> Permit | None:
        """May a call go out now (``record`` and ``now`` as read with the connection)?"""
        if record.opened_at is None:
            return Permit(probe=False)
        if not record.may_probe(now, self.policy):
            return None
        claimed = await self._execute(
            _CLAIM_PROBE,
            {
                "id": connection_id,
                "cooldown": self.policy.cooldown,
                "probe_timeout": self.policy.probe_timeout,
            },
        )
        return Permit(probe=True) if claimed else None

    async def record_success(self, connection_id: uuid.UUID, record: CircuitRecord) -> None:
        if record.clean:
            return  # the steady state writes nothing
        await self._execute(_RECORD_SUCCESS, {"id": connection_id})

    async def record_failure(self, connection_id: uuid.UUID, code: str) -> None:
        await self._execute(
            _RECORD_FAILURE, {"id": connection_id, "code": code, "threshold": self.policy.threshold}
        )

    async def release(self, connection_id: uuid.UUID, permit: Permit) -> None:
        """The call said nothing about the peer (e.g. our own row is unusable): a probe goes
        back, the state is otherwise unchanged."""
        if permit.probe:
            await self._execute(_RELEASE_PROBE, {"id": connection_id})

    async def _execute(self, sql: str, params: dict[str, Any]) -> bool:
        """Run one circuit statement; True if it returned or changed a row. Failures (the pool
        is exhausted, the connection was deleted meanwhile, …) are logged, never raised."""
        try:
            async with self.pool.connection() as conn:
                cursor = await conn.execute(sql, params)
                return cursor.rowcount > 0
        except Exception as exc:  # the type only: a message may carry SQL or connection details
            log.warning("circuit state not updated", extra={"error": type(exc).__name__})
            return False

    async def snapshot(self) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_SNAPSHOT)).fetchall()
        return [
            {
                "connection_id": connection_id,
                "name": name,
                **CircuitRecord(failures, code, opened_at, probe_at).snapshot(now, self.policy),
            }
            for connection_id, name, failures, code, opened_at, probe_at, now in rows
        ]
