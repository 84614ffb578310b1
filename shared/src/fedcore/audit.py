"""The audit writer: one append-only ``federation_audit_log`` row per admin action, enrollment
attempt and verb call, allowed or denied.

Rows are written in the caller's session, so an audit row commits (or not) together with the
change it describes. Denials that roll the main transaction back use :func:`write_audit_now`,
which commits in a session of its own so the refusal is still recorded.
"""

from __future__ import annotations

import uuid

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fedcore.models import ActorType, AuditOutcome, FederationAuditLog
from fedcore.request_id import current_request_id


def _values(
    *,
    actor_type: ActorType,
    actor_id: str | None,
    action: str,
    outcome: AuditOutcome,
    reason_code: str | None,
    resource: str | None,
    target_id: str | None,
    grant_id: uuid.UUID | None,
    peer_id: uuid.UUID | None,
    subject_user_id: uuid.UUID | None,
    row_count: int | None,
    cert_serial: str | None,
) -> dict[str, object]:
    return {
        "request_id": current_request_id(),
        "actor_type": actor_type,
        "actor_id": actor_id,
        "action": action,
        "outcome": outcome,
        "reason_code": reason_code,
        "resource": resource,
        "target_id": target_id,
        "grant_id": grant_id,
        "peer_id": peer_id,
        "subject_user_id": subject_user_id,
        "row_count": row_count,
        "cert_serial": cert_serial,
    }


async def write_audit(
    session: AsyncSession,
    *,
    actor_type: ActorType,
    action: str,
    outcome: AuditOutcome,
    actor_id: str | None = None,
    reason_code: str | None = None,
    resource: str | None = None,
    target_id: str | None = None,
    grant_id: uuid.UUID | None = None,
    peer_id: uuid.UUID | None = None,
    subject_user_id: uuid.UUID | None = None,
    row_count: int | None = None,
    cert_serial: str | None = None,
) -> None:
    """Add an audit row to ``session`` (committed with the caller's transaction)."""
    await session.execute(
        insert(FederationAuditLog).values(
            **_values(
                actor_type=actor_type,
                actor_id=actor_id,
                action=action,
                outcome=outcome,
                reason_code=reason_code,
                resource=resource,
                target_id=target_id,
                grant_id=grant_id,
                peer_id=peer_id,
                subject_user_id=subject_user_id,
                row_count=row_count,
                cert_serial=cert_serial,
            )
        )
    )


async def write_audit_now(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    actor_type: ActorType,
    action: str,
    outcome: AuditOutcome,
    actor_id: str | None = None,
    reason_code: str | None = None,
    resource: str | None = None,
    target_id: str | None = None,
    grant_id: uuid.UUID | None = None,
    peer_id: uuid.UUID | None = None,
    subject_user_id: uuid.UUID | None = None,
    row_count: int | None = None,
    cert_serial: str | None = None,
) -> None:
    """Write and commit an audit row in its own transaction (for refusals that roll back)."""
    async with sessionmaker() as session:
        await write_audit(
            session,
            actor_type=actor_type,
            action=action,
            outcome=outcome,
            actor_id=actor_id,
            reason_code=reason_code,
            resource=resource,
            target_id=target_id,
            grant_id=grant_id,
            peer_id=peer_id,
            subject_user_id=subject_user_id,
            row_count=row_count,
            cert_serial=cert_serial,
        )
        await session.commit()
