"""The verbs: capabilities, list, get, search — each wrapped so exactly one audit row is written
per request, allowed or denied, with the reason code and row count.

An allowed read and its audit row share the request's transaction. A refusal rolls back and
writes its audit row in a transaction of its own.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fedcore.audit import AuditEvent, write_audit, write_audit_now
from fedcore.errors import BadRequest, DomainError, Forbidden, NotFound
from fedcore.models import ActorType, AuditOutcome
from fedcore.scope import ScopePolicy
from fedcore.scope_evaluator import (
    CONTENT_RESOURCES,
    Allowed,
    effective_resources,
    effective_row_cap,
    evaluate,
    known_resource,
)
from verbs import repository
from verbs.auth import FederationContext, InboundAuthenticator, PartialIdentity
from verbs.schemas import ListRequest, SearchRequest, VerbFilter

SUPPORTED_VERBS = ["capabilities", "list", "get", "search"]
VerbResult = tuple[dict[str, Any], int | None]


def encode_cursor(last_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(last_id.bytes).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> uuid.UUID | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return uuid.UUID(bytes=raw)
    except (ValueError, binascii.Error):
        raise BadRequest("cursor is not valid", code="invalid_cursor") from None


def _filters(resource: str, requested: VerbFilter | None) -> repository.ContentFilters:
    if requested is None:
        return repository.ContentFilters()
    if resource not in CONTENT_RESOURCES and (requested.status or requested.updated_since):
        raise BadRequest("filters apply to tasks, notes and credentials", code="invalid_filter")
    if requested.status is not None and resource != "tasks":
        raise BadRequest("status filters apply to tasks only", code="invalid_filter")
    return repository.ContentFilters(status=requested.status, updated_since=requested.updated_since)


@dataclass
class VerbService:
    authenticator: InboundAuthenticator
    sessionmaker: async_sessionmaker[AsyncSession]
    policy: ScopePolicy
    source_name: str

    async def run(
        self,
        request: Request,
        session: AsyncSession,
        verb: str,
        resource: str | None,
        action: Callable[[FederationContext], Awaitable[VerbResult]],
    ) -> dict[str, Any]:
        known = PartialIdentity()
        # Only names we know go into the audit row: the path segment is the peer's text.
        audited_resource = resource if resource is None or known_resource(resource) else "unknown"
        try:
            context = await self.authenticator.authenticate(request, session, known)
            body, row_count = await action(context)
        except DomainError as refusal:
            await session.rollback()
            outcome = AuditOutcome.ERROR if refusal.status_code >= 500 else AuditOutcome.DENIED
            await write_audit_now(
                self.sessionmaker,
                self._event(verb, audited_resource, known, outcome, refusal.audit_reason, None),
            )
            raise
        except Exception as failure:
            # Anything unexpected (a database error, …) is still one audited request.
            await session.rollback()
            await write_audit_now(
                self.sessionmaker,
                self._event(
                    verb, audited_resource, known, AuditOutcome.ERROR, "internal_error", None
                ),
            )
            raise failure
        await write_audit(
            session,
            self._event(
                verb,
                audited_resource,
                PartialIdentity(
                    serial=context.cert.serial,
                    grant_id=context.grant_id,
                    subject_user_id=context.subject_user_id,
                    peer_id=context.peer_id,
                ),
                AuditOutcome.ALLOWED,
                None,
                row_count,
            ),
        )
        return body

    @staticmethod
    def _event(
        verb: str,
        resource: str | None,
        known: PartialIdentity,
        outcome: AuditOutcome,
        reason: str | None,
        row_count: int | None,
    ) -> AuditEvent:
        return AuditEvent(
            actor_type=ActorType.PEER,
            actor_id=str(known.peer_id) if known.peer_id else None,
            action=f"verb.{verb}",
            outcome=outcome,
            reason_code=reason,
            resource=resource,
            grant_id=known.grant_id,
            peer_id=known.peer_id,
            subject_user_id=known.subject_user_id,
            row_count=row_count,
            cert_serial=known.serial,
        )

    # -- the verbs ---------------------------------------------------------------------------

    async def capabilities(self, context: FederationContext) -> VerbResult:
        return (
            {
                "resources": effective_resources(context.scope, self.policy),
                "excluded_resources": list(context.scope.excluded_resources),
                "max_rows_per_query": effective_row_cap(context.scope, self.policy),
                "supported_verbs": SUPPORTED_VERBS,
                "grant_id": context.grant_id,
                "subject_user_id": context.subject_user_id,
                "expires_at": context.expires_at,
            },
            None,
        )

    async def _allowed(
        self, session: AsyncSession, context: FederationContext, resource: str, limit: int | None
    ) -> Allowed:
        teams = await repository.member_team_ids(session, context.subject_user_id)
        decision = evaluate(
            context.scope, self.policy, resource, context.subject_user_id, teams, limit
        )
        if isinstance(decision, Allowed):
            return decision
        if decision.code == "unknown_resource":
            raise NotFound("no such resource", code="unknown_resource")
        refusal = Forbidden("resource is not in this grant's scope", code=decision.code)
        refusal.audit_detail = decision.detail  # not_granted / excluded / hard_denied
        raise refusal

    def _tag(self, row: dict[str, Any]) -> dict[str, Any]:
        row["_source"] = self.source_name
        return row

    def _page(self, rows: list[dict[str, Any]], limit: int) -> VerbResult:
        truncated = len(rows) > limit
        page = rows[:limit]
        next_cursor = encode_cursor(page[-1]["id"]) if truncated and page else None
        return (
            {
                "items": [self._tag(row) for row in page],
                "next_cursor": next_cursor,
                "truncated": truncated,
            },
            len(page),
        )

    async def list(
        self, session: AsyncSession, context: FederationContext, resource: str, body: ListRequest
    ) -> VerbResult:
        allowed = await self._allowed(session, context, resource, body.limit)
        after = decode_cursor(body.cursor)
        filters = _filters(resource, body.filter)
        if resource in CONTENT_RESOURCES:
            rows = await repository.list_content(session, resource, allowed.rows, after, filters)
        else:
            rows = await repository.list_directory(session, resource, allowed.rows, after)
        return self._page(rows, allowed.rows.limit)

    async def search(
        self, session: AsyncSession, context: FederationContext, resource: str, body: SearchRequest
    ) -> VerbResult:
        allowed = await self._allowed(session, context, resource, body.limit)
        if resource not in CONTENT_RESOURCES:
            raise BadRequest("search covers tasks, notes and credentials", code="invalid_search")
        rows = await repository.list_content(
            session,
            resource,
            allowed.rows,
            decode_cursor(body.cursor),
            _filters(resource, body.filter),
            search=body.query,
        )
        return self._page(rows, allowed.rows.limit)

    async def get(
        self, session: AsyncSession, context: FederationContext, resource: str, row_id: str
    ) -> VerbResult:
        allowed = await self._allowed(session, context, resource, None)
        not_found = NotFound("no such row", code="not_found")
        try:
            parsed = uuid.UUID(row_id)
        except ValueError:
            raise not_found from None
        if resource in CONTENT_RESOURCES:
            row = await repository.get_content(session, resource, allowed.rows, parsed)
        else:
            row = await repository.get_directory(session, resource, allowed.rows, parsed)
        # Absent and out-of-scope answer the same: no existence oracle.
        if row is None:
            raise not_found
        return {"item": self._tag(row)}, 1
