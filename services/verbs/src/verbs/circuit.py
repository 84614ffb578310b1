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

The state lives in the verbs process (one uvicorn worker per gateway in the launcher; with
several workers or replicas each keeps its own, which only means each learns a dead peer on
its own). It is read by ``GET /api/local/v1/circuits`` and shown by
``mosaic federation connection list``.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    threshold: int
    cooldown_seconds: float
    clock: Callable[[], float] = time.monotonic
    name: str = ""
    state: CircuitState = CircuitState.CLOSED
    consecutive_failures: int = 0
    last_failure_code: str | None = None
    _opened_at: float | None = field(default=None, repr=False)
    _opened_wall: datetime | None = field(default=None, repr=False)

    def acquire(self) -> bool:
        """May a call go out now? In ``half_open`` only the first caller gets the probe."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            assert self._opened_at is not None
            if self.clock() - self._opened_at >= self.cooldown_seconds:
                self.state = CircuitState.HALF_OPEN  # this caller is the probe
                return True
            return False
        return False  # half_open: the probe is out

    def record_success(self) -> None:
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self._opened_at = None
        self._opened_wall = None

    def release(self) -> None:
        """The call said nothing about the peer (e.g. our own row is unusable): a probe goes
        back, the state is otherwise unchanged."""
        if self.state is CircuitState.HALF_OPEN:
            self.state = CircuitState.OPEN

    def record_failure(self, code: str) -> None:
        self.consecutive_failures += 1
        self.last_failure_code = code
        if self.state is CircuitState.HALF_OPEN or self.consecutive_failures >= self.threshold:
            self.state = CircuitState.OPEN
            self._opened_at = self.clock()
            self._opened_wall = datetime.now(UTC)

    def snapshot(self) -> dict[str, Any]:
        retry_at = None
        if self.state is CircuitState.OPEN and self._opened_wall is not None:
            retry_at = self._opened_wall + timedelta(seconds=self.cooldown_seconds)
        return {
            "state": self.state.value,
            "consecutive_failures": self.consecutive_failures,
            "last_failure_code": self.last_failure_code,
            "opened_at": self._opened_wall,
            "probe_after": retry_at,
        }


class CircuitBreakers:
    """The breakers of this process, one per connection id."""

    def __init__(
        self, threshold: int, cooldown_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock
        self._breakers: dict[uuid.UUID, CircuitBreaker] = {}

    def get(self, connection_id: uuid.UUID, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(connection_id)
        if breaker is None:
            breaker = CircuitBreaker(self.threshold, self.cooldown_seconds, self._clock, name)
            self._breakers[connection_id] = breaker
        breaker.name = name
        return breaker

    def retain(self, connection_ids: Iterable[uuid.UUID]) -> None:
        keep = set(connection_ids)
        for connection_id in [cid for cid in self._breakers if cid not in keep]:
            del self._breakers[connection_id]

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"connection_id": connection_id, "name": breaker.name, **breaker.snapshot()}
            for connection_id, breaker in sorted(
                self._breakers.items(), key=lambda item: item[1].name
            )
        ]
