"""The audit writer: one append-only ``federation_audit_log`` row per admin action, enrollment
attempt and verb call, allowed or denied.

``write_audit`` adds the row to the caller's session, so it commits (or not) together with the
change it describes. Refusals that roll the main transaction back use ``write_audit_now``, which
commits in a session of its own so the refusal is still recorded. ``insert_audit`` is the same
row on a raw psycopg connection (the verbs' hot path, autocommit: committed by its statement);
``audit_insert_sql`` lets a read statement insert its own audit row (one round trip fewer).
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any, cast

from psycopg import AsyncConnection
from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fedcore.models import ActorType, AuditOutcome, FederationAuditLog
from fedcore.request_id import current_request_id


@dataclass(frozen=True)
class AuditEvent:
    actor_type: ActorType
    action: str
    outcome: AuditOutcome
    actor_id: str | None = None
    reason_code: str | None = None
    resource: str | None = None
    target_id: str | None = None
    grant_id: uuid.UUID | None = None
    peer_id: uuid.UUID | None = None
    subject_user_id: uuid.UUID | None = None
    row_count: int | None = None
    cert_serial: str | None = None

    def with_outcome(
        self, outcome: AuditOutcome, reason_code: str | None = None, **changes: object
    ) -> AuditEvent:
        return dataclasses.replace(self, outcome=outcome, reason_code=reason_code, **changes)  # type: ignore[arg-type]


# A Core insert on the table, built once, values as parameters: the ORM-enabled insert of the
# mapped class (and dataclasses.asdict's deep copies) cost ~1 ms per row on the verbs' hot path.
_AUDIT_INSERT = insert(cast(Table, FederationAuditLog.__table__))
_EVENT_FIELDS = tuple(f.name for f in dataclasses.fields(AuditEvent))


async def write_audit(session: AsyncSession, event: AuditEvent) -> None:
    """Add an audit row to ``session`` (committed with the caller's transaction)."""
    values = {name: getattr(event, name) for name in _EVENT_FIELDS}
    values["request_id"] = current_request_id()
    await session.execute(_AUDIT_INSERT, values)


async def write_audit_now(
    sessionmaker: async_sessionmaker[AsyncSession], event: AuditEvent
) -> None:
    """Write and commit an audit row in its own transaction (for refusals that roll back)."""
    async with sessionmaker() as session:
        await write_audit(session, event)
        await session.commit()


# The same row as raw SQL. Enum values go as text (psycopg sends str untyped, so Postgres casts
# it to the column's enum type); request_id comes from the request-id middleware's context.
_AUDIT_COLUMNS = (*_EVENT_FIELDS, "request_id")


def audit_values(event: AuditEvent, prefix: str = "") -> dict[str, Any]:
    """The row's values as statement parameters named ``<prefix><column>``."""
    values: dict[str, Any] = {name: getattr(event, name) for name in _EVENT_FIELDS}
    values["actor_type"] = event.actor_type.value
    values["outcome"] = event.outcome.value
    values["request_id"] = current_request_id()
    return {prefix + name: value for name, value in values.items()}


def audit_insert_sql(prefix: str = "", row_count_sql: str | None = None) -> str:
    """``INSERT`` of one audit row from parameters named ``<prefix><column>``; with
    ``row_count_sql`` the row count is that SQL expression instead (a statement that reads rows
    and audits them at once, e.g. a data-modifying CTE). Table and column names are fixed."""
    values = [
        row_count_sql if name == "row_count" and row_count_sql else f"%({prefix}{name})s"
        for name in _AUDIT_COLUMNS
    ]
    return (
        f"INSERT INTO {FederationAuditLog.__tablename__} ({', '.join(_AUDIT_COLUMNS)}) "  # noqa: S608
        f"VALUES ({', '.join(values)})"
    )


_AUDIT_INSERT_SQL = audit_insert_sql()


async def insert_audit(conn: AsyncConnection[Any], event: AuditEvent) -> None:
    """Insert an audit row on ``conn`` (autocommit: the statement commits it)."""
    await conn.execute(_AUDIT_INSERT_SQL, audit_values(event))
