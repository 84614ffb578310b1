"""Running one query against several sources at once and merging the answers.

* Every source (``local``, ``federated:<connection name>``) runs as its own task, in parallel,
  bounded by the per-source timeout; a source that fails or runs late becomes an ``errors``
  entry ``{source, code}`` — it never fails the whole query.
* Merge order (stable): the local source first, then the connections by name; inside a source,
  the source's own order (keyset order on ``id``). Each source contributes at most ``limit``
  rows (its first page).
* Every row carries ``_source``: local rows this gateway's public name; remote rows keep the
  ``_source`` their gateway put on them (its own name) and get ``_connection``, the local name of
  the connection they came through — set here, so a peer cannot pass its rows off as another
  source's.
* Nothing from a peer is stored: rows live in this request's memory and in the response only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedcore.federation_client import (
    ConnectionMaterial,
    FederationClientError,
    FederationClientPool,
)
from verbs.circuit import CircuitBreakers, CircuitRecord

LOCAL = "local"
FEDERATED_PREFIX = "federated:"

LocalRunner = Callable[[], Awaitable[tuple[list[dict[str, Any]], bool]]]


@dataclass(frozen=True)
class QuerySpec:
    resource: str
    limit: int
    query: str | None = None
    filter: dict[str, Any] | None = None


@dataclass
class SourceOutcome:
    source: str
    items: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False
    code: str | None = None
    elapsed_ms: float = 0.0
    peer_down: bool = False  # unreachable, late, 5xx: feeds the circuit breaker

    @property
    def ok(self) -> bool:
        return self.code is None

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": "ok" if self.ok else "error",
            "code": self.code,
            "count": len(self.items),
            "truncated": self.truncated,
            "elapsed_ms": round(self.elapsed_ms, 1),
        }


def federated(name: str) -> str:
    return f"{FEDERATED_PREFIX}{name}"


class FanOut:
    def __init__(
        self, pool: FederationClientPool, breakers: CircuitBreakers, source_timeout: float
    ) -> None:
        self.pool = pool
        self.breakers = breakers
        self.source_timeout = source_timeout

    async def run(
        self,
        spec: QuerySpec,
        local: LocalRunner | None,
        connections: Sequence[Any],
    ) -> list[SourceOutcome]:
        """Outcomes in merge order: local first, then ``connections`` sorted by name."""
        ordered = sorted(connections, key=lambda row: str(row.name))
        # A TaskGroup: should the local query itself fail (this gateway's own database), the
        # peer calls are cancelled and the error is this request's (a 500), as for any query.
        async with asyncio.TaskGroup() as group:
            tasks = []
            if local is not None:
                tasks.append(group.create_task(self._bounded(LOCAL, self._local(local))))
            for row in ordered:
                tasks.append(group.create_task(self._remote(row, spec)))
        return [task.result() for task in tasks]

    async def _bounded(
        self, source: str, work: Awaitable[tuple[list[dict[str, Any]], bool]]
    ) -> SourceOutcome:
        started = time.perf_counter()
        outcome = SourceOutcome(source)
        try:
            outcome.items, outcome.truncated = await asyncio.wait_for(work, self.source_timeout)
        except TimeoutError:
            outcome.code, outcome.peer_down = "source_timeout", True
        except FederationClientError as exc:
            outcome.code, outcome.peer_down = exc.code, exc.peer_down
        outcome.elapsed_ms = (time.perf_counter() - started) * 1000
        return outcome

    @staticmethod
    async def _local(local: LocalRunner) -> tuple[list[dict[str, Any]], bool]:
        return await local()

    async def _remote(self, row: Any, spec: QuerySpec) -> SourceOutcome:
        """One connection's call, through its circuit. ``row`` is a connection row joined with
        its circuit and the database's ``now`` (reads.active_connections)."""
        source = federated(str(row.name))
        record = CircuitRecord.from_row(row)
        permit = await self.breakers.acquire(row.id, record, row.db_now)
        if permit is None:
            return SourceOutcome(source, code="circuit_open")
        # Cancelled before it reports (the whole query failed): nothing is recorded, and a
        # probe claim expires on its own (CircuitPolicy.probe_timeout_seconds).
        outcome = await self._bounded(source, self._fetch(row, spec))
        if outcome.code is None:
            await self.breakers.record_success(row.id, record)
        elif outcome.peer_down:
            await self.breakers.record_failure(row.id, outcome.code)
        elif outcome.code == "connection_unusable":
            await self.breakers.release(row.id, permit)  # about our row, not about the peer
        else:
            await self.breakers.record_success(row.id, record)  # a refusal is an answer
        return outcome

    async def _fetch(self, row: Any, spec: QuerySpec) -> tuple[list[dict[str, Any]], bool]:
        client = self.pool.client_for(ConnectionMaterial.from_row(row))
        if spec.query is not None:
            page = await client.search(
                spec.resource, spec.query, limit=spec.limit, filter=spec.filter
            )
        else:
            page = await client.list(spec.resource, limit=spec.limit, filter=spec.filter)
        name = str(row.name)
        items = []
        for item in page.items[: spec.limit]:  # a peer never gets more room than was asked
            if not isinstance(item.get("_source"), str):
                item["_source"] = name
            item["_connection"] = name
            items.append(item)
        return items, page.truncated or len(page.items) > spec.limit


def merge(outcomes: Sequence[SourceOutcome]) -> dict[str, Any]:
    errors = [{"source": o.source, "code": o.code} for o in outcomes if not o.ok]
    return {
        "items": [item for outcome in outcomes for item in outcome.items],
        "sources": [outcome.summary() for outcome in outcomes],
        "errors": errors,
        "_partial": bool(errors),
    }
