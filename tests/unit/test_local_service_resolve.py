"""Naming a connection that is no longer active drops its cached client at once (its key must
not stay in the worker's memory), and the refusal says why."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from fedcore.errors import Conflict
from fedcore.models import ConnectionState
from verbs import repository
from verbs.local_service import LocalQueryService


class RecordingPool:
    def __init__(self) -> None:
        self.dropped: list[uuid.UUID] = []

    def drop(self, connection_id: uuid.UUID) -> None:
        self.dropped.append(connection_id)


def _service(pool: RecordingPool) -> LocalQueryService:
    return LocalQueryService(
        sessionmaker=None,  # type: ignore[arg-type]
        rows_pool=None,  # type: ignore[arg-type]
        fanout=None,  # type: ignore[arg-type]
        pool=pool,  # type: ignore[arg-type]
        source_name="b",
        default_limit=50,
        max_limit=100,
    )


@pytest.mark.parametrize("state", [ConnectionState.REVOKED, ConnectionState.PENDING])
async def test_a_named_connection_that_is_not_active_is_refused_and_its_client_dropped(
    monkeypatch: pytest.MonkeyPatch, state: ConnectionState
) -> None:
    row = SimpleNamespace(id=uuid.uuid4(), name="to-a", state=state)

    async def by_name(_session: Any, name: str) -> Any:
        return row if name == "to-a" else None

    monkeypatch.setattr(repository, "connection_by_name", by_name)
    pool = RecordingPool()
    with pytest.raises(Conflict) as refused:
        await _service(pool)._resolve(None, "federated:to-a")  # type: ignore[arg-type]
    assert refused.value.code == "connection_not_active"
    assert pool.dropped == [row.id]


async def test_an_active_named_connection_keeps_its_client(monkeypatch: pytest.MonkeyPatch) -> None:
    row = SimpleNamespace(id=uuid.uuid4(), name="to-a", state=ConnectionState.ACTIVE)

    async def by_name(_session: Any, _name: str) -> Any:
        return row

    monkeypatch.setattr(repository, "connection_by_name", by_name)
    pool = RecordingPool()
    resolved = await _service(pool)._resolve(None, "federated:to-a")  # type: ignore[arg-type]
    assert resolved.connections == [row]
    assert pool.dropped == []
