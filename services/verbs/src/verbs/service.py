"""The verbs: capabilities, list, get, search — each wrapped so exactly one audit row is written
per request, allowed or denied, with the reason code and row count.

A verb call runs on one raw psycopg connection in autocommit mode (:mod:`verbs.reads`): the
certificate binding, the rows, then the audit row, each committed by its own statement, so the
audit row is in the database before the response is sent. Renewal writes through the request's
SQLAlchemy session, and its allowed audit row commits together with the renewal.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import psycopg
from fastapi import Request
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import ClientDisconnect

from fedcore.audit import AuditEvent, audit_values, insert_audit, write_audit, write_audit_now
from fedcore.db import DatabaseBusy, contention_error
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
from verbs import reads
from verbs.auth import FederationContext, InboundAuthenticator, PartialIdentity
from verbs.reads import Connection
from verbs.schemas import ListRequest, SearchRequest, VerbFilter

log = logging.getLogger("verbs.service")

SUPPORTED_VERBS = ["capabilities", "list", "get", "search"]
VerbResult = tuple[dict[str, Any], int | None]


@dataclass
class AllowedAudit:
    """The allowed audit row of one verb call. ``run`` inserts it after the action, unless the
    action's own read statement already did (``written``; see ``verbs.reads.list_content``)."""

    event: AuditEvent
    written: bool = False

    def statement_values(self) -> dict[str, Any]:
        return audit_values(self.event, reads.AUDIT_PREFIX)


VerbAction = Callable[[Connection, FederationContext, AllowedAudit], Awaitable[VerbResult]]


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


def _filters(resource: str, requested: VerbFilter | None) -> reads.ContentFilters:
    if requested is None:
        return reads.ContentFilters()
    if resource not in CONTENT_RESOURCES and (requested.status or requested.updated_since):
        raise BadRequest("filters apply to tasks, notes and credentials", code="invalid_filter")
    if requested.status is not None and resource != "tasks":
        raise BadRequest("status filters apply to tasks only", code="invalid_filter")
    return reads.ContentFilters(status=requested.status, updated_since=requested.updated_since)


@dataclass
class VerbService:
    authenticator: InboundAuthenticator
    pool: AsyncConnectionPool[AsyncConnection[Any]]
    policy: ScopePolicy
    source_name: str
    # Refusals the raw pool cannot record (no connection, a dead one) go through the engine.
    sessionmaker: async_sessionmaker[AsyncSession]

    async def run(
        self,
        request: Request,
        verb: str,
        resource: str | None,
        action: VerbAction,
        audit_session: AsyncSession | None = None,
        fresh_binding: bool = False,
    ) -> dict[str, Any]:
        """Authenticate, run ``action``, write the one audit row. With ``audit_session`` the
        allowed row joins that session's transaction (a write the row describes);
        ``fresh_binding`` reads the certificate binding from the database, not the cache."""
        known = PartialIdentity()
        # Only names we know go into the audit row: the path segment is the peer's text.
        audited_resource = resource if resource is None or known_resource(resource) else "unknown"

        def event(outcome: AuditOutcome, reason: str | None, rows: int | None) -> AuditEvent:
            return self._event(verb, audited_resource, known, outcome, reason, rows)

        try:
            async with self._connection() as conn:
                audit: AllowedAudit | None = None
                try:
                    context = await self.authenticator.authenticate(
                        request, conn, known, fresh=fresh_binding
                    )
                    # `known` now holds the authenticated identity (serial, grant, subject, peer).
                    audit = AllowedAudit(event(AuditOutcome.ALLOWED, None, None))
                    body, row_count = await action(conn, context, audit)
                    if not audit.written:
                        allowed = audit.event.with_outcome(
                            AuditOutcome.ALLOWED, row_count=row_count
                        )
                        if audit_session is not None:
                            # Commit here, inside the refusal handling: a failed commit is
                            # then audited as an error like any failure (never no row).
                            await write_audit(audit_session, allowed)
                            await audit_session.commit()
                        else:
                            await insert_audit(conn, allowed)
                        audit.written = True
                    return body
                except DomainError as refusal:
                    outcome = (
                        AuditOutcome.ERROR if refusal.status_code >= 500 else AuditOutcome.DENIED
                    )
                    await self._audit_refusal(
                        conn, audit, event(outcome, refusal.audit_reason, None)
                    )
                    raise
                except ClientDisconnect:
                    # nginx closed the connection while the body was read (its client left).
                    await self._audit_refusal(
                        conn, audit, event(AuditOutcome.ERROR, "client_disconnected", None)
                    )
                    raise
                except Exception as failure:
                    # Anything unexpected (a database error, …) is still one audited request.
                    busy = contention_error(failure)
                    reason = busy.code if busy is not None else "internal_error"
                    await self._audit_refusal(conn, audit, event(AuditOutcome.ERROR, reason, None))
                    if busy is not None:
                        raise busy from None
                    raise
        except PoolTimeout:
            # No connection for this request within the pool's timeout: answered (503) and
            # audited through the engine's own pool.
            busy = DatabaseBusy("the database is busy; retry shortly")
            await self._audit_refusal(None, None, event(AuditOutcome.ERROR, busy.code, None))
            raise busy from None

    def _connection(self) -> AbstractAsyncContextManager[Connection]:
        return self.pool.connection()

    async def _audit_refusal(
        self, conn: Connection | None, allowed: AllowedAudit | None, event: AuditEvent
    ) -> None:
        """The refusal's audit row: on the request's connection when it is still usable (a
        statement that failed in autocommit leaves it idle), else through the SQLAlchemy
        engine, whose pool pings a connection before use (after a database restart the raw
        pool's idle connections are all dead). If the request's read already committed its audit
        row (and something failed after it), that row stands: one row per request."""
        if allowed is not None and allowed.written:
            log.warning(
                "verb call failed after its audited read", extra={"code": event.reason_code}
            )
            return
        if (
            conn is not None
            and not conn.broken
            and conn.info.transaction_status == TransactionStatus.IDLE
        ):
            try:
                await insert_audit(conn, event)
                return
            except psycopg.Error as exc:  # e.g. the connection died just now: the path below
                log.warning("refusal audit falls back", extra={"error": type(exc).__name__})
        await write_audit_now(self.sessionmaker, event)

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

    async def capabilities(
        self, conn: Connection, context: FederationContext, audit: AllowedAudit
    ) -> VerbResult:
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

    def _allowed(self, context: FederationContext, resource: str, limit: int | None) -> Allowed:
        decision = evaluate(
            context.scope,
            self.policy,
            resource,
            context.subject_user_id,
            context.subject_team_ids,
            limit,
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
        self,
        conn: Connection,
        context: FederationContext,
        resource: str,
        body: ListRequest,
        audit: AllowedAudit,
    ) -> VerbResult:
        allowed = self._allowed(context, resource, body.limit)
        after = decode_cursor(body.cursor)
        filters = _filters(resource, body.filter)
        if resource in CONTENT_RESOURCES:
            rows = await reads.list_content(
                conn, resource, allowed.rows, after, filters, audit=audit.statement_values()
            )
            audit.written = True
        else:
            rows = await reads.list_directory(conn, resource, allowed.rows, after)
        return self._page(rows, allowed.rows.limit)

    async def search(
        self,
        conn: Connection,
        context: FederationContext,
        resource: str,
        body: SearchRequest,
        audit: AllowedAudit,
    ) -> VerbResult:
        allowed = self._allowed(context, resource, body.limit)
        if resource not in CONTENT_RESOURCES:
            raise BadRequest("search covers tasks, notes and credentials", code="invalid_search")
        rows = await reads.list_content(
            conn,
            resource,
            allowed.rows,
            decode_cursor(body.cursor),
            _filters(resource, body.filter),
            search=body.query,
            audit=audit.statement_values(),
        )
        audit.written = True
        return self._page(rows, allowed.rows.limit)

    async def get(
        self,
        conn: Connection,
        context: FederationContext,
        resource: str,
        row_id: str,
        audit: AllowedAudit,
    ) -> VerbResult:
        allowed = self._allowed(context, resource, None)
        not_found = NotFound("no such row", code="not_found")
        try:
            parsed = uuid.UUID(row_id)
        except ValueError:
            raise not_found from None
        if resource in CONTENT_RESOURCES:
            row = await reads.get_content(conn, resource, allowed.rows, parsed)
        else:
            row = await reads.get_directory(conn, resource, allowed.rows, parsed)
        # Absent and out-of-scope answer the same: no existence oracle.
        if row is None:
            raise not_found
        return {"item": self._tag(row)}, 1
