"""The audit writer: one append-only ``federation_audit_log`` row per admin action, enrollment
attempt and verb call, allowed or denied.

``write_audit`` adds the row to the caller's session, so it commits (or not) together with the
change it describes. Refusals that roll the main transaction back use ``write_audit_now``, which
commits in a session of its own so the refusal is still recorded.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass

from sqlalchemy import insert
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


async def write_audit(session: AsyncSession, event: AuditEvent) -> None:
    """Add an audit row to ``session`` (committed with the caller's transaction)."""
    await session.execute(
        insert(FederationAuditLog).values(
            request_id=current_request_id(), **dataclasses.asdict(event)
        )
    )


async def write_audit_now(
    sessionmaker: async_sessionmaker[AsyncSession], event: AuditEvent
) -> None:
    """Write and commit an audit row in its own transaction (for refusals that roll back)."""
    async with sessionmaker() as session:
        await write_audit(session, event)
        await session.commit()
