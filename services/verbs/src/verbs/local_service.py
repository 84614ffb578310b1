"""The local query API: a local user (or an admin acting as one) reads one resource from this
gateway, from one outbound connection, or from all of them at once (DESIGN §5, docs/fanout.md).

Who the query runs as:

* a ``user`` token: its own user. ``as_user`` may be omitted or name that same user; naming
  another user is ``403 as_user_forbidden``;
* an ``admin`` token: ``as_user`` is required (``422 as_user_required``) and must be a local user
  (``404 user_not_found``) — an admin token stands for no user, and the local rows must follow
  *someone's* native permissions.

Local rows follow the native permission rule: the user's own rows outside any team plus the rows
of every team they belong to now (the same ``RowFilter``/SQL as the verbs, with
``include_personal`` and all the user's teams). Remote rows follow the remote grant: the peer
decides what the connection's certificate may read there.

Connections are this gateway's identities at other gateways (no local owner in the schema), so
any principal of the admin listener may query through them.

One audit row per query, ``local.query``: outcome ``allowed`` with reason
``complete:<ok>/<sources>`` or ``partial:<ok>/<sources>`` and the merged row count, or
``denied`` with the refusal code. Row contents are never audited or logged.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fedcore.admin_auth import AdminPrincipal
from fedcore.audit import AuditEvent, write_audit, write_audit_now
from fedcore.db import DatabaseBusy, contention_error
from fedcore.errors import BadRequest, Conflict, DomainError, Forbidden, NotFound, Unprocessable
from fedcore.federation_client import (
    ConnectionMaterial,
    FederationClientError,
    FederationClientPool,
)
from fedcore.models import ActorType, AuditOutcome, ConnectionState
from fedcore.scope_evaluator import CONTENT_RESOURCES, RowFilter, known_resource
from verbs import reads, repository
from verbs.fanout import LOCAL, FanOut, QuerySpec, SourceOutcome, federated, merge
from verbs.local_schemas import LocalQueryRequest
from verbs.service import _filters

log = logging.getLogger("verbs.local")

_CODE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)


class PeerCallFailed(DomainError):
    """A single, explicit call to a peer (capabilities) failed: 502 with the peer's code."""

    status_code = 502
    default_code = "peer_call_failed"


@dataclass(frozen=True)
class ResolvedSource:
    source: str  # as asked: local | all | federated:<name>
    include_local: bool
    connections: list[Any]


@dataclass
class LocalQueryService:
    sessionmaker: async_sessionmaker[AsyncSession]
    rows_pool: AsyncConnectionPool[AsyncConnection[Any]]  # local rows: the verbs' raw reads
    fanout: FanOut
    pool: FederationClientPool
    source_name: str
    default_limit: int
    max_limit: int

    # -- audit wrapper -----------------------------------------------------------------------

    async def audited(
        self,
        session: AsyncSession,
        principal: AdminPrincipal,
        action: str,
        resource: str | None,
        work: Callable[[AuditEvent], Awaitable[tuple[dict[str, Any], AuditEvent]]],
    ) -> dict[str, Any]:
        event = AuditEvent(
            actor_type=ActorType.ADMIN_TOKEN,
            actor_id=principal.actor_id,
            action=action,
            outcome=AuditOutcome.ALLOWED,
            # Only names we know: the path segment is the caller's text.
            resource=resource if resource is None or known_resource(resource) else "unknown",
            subject_user_id=principal.user_id,
        )
        try:
            body, event = await work(event)
        except DomainError as refusal:
            await session.rollback()
            outcome = AuditOutcome.ERROR if refusal.status_code >= 500 else AuditOutcome.DENIED
            await write_audit_now(
                self.sessionmaker, event.with_outcome(outcome, refusal.audit_reason)
            )
            raise
        except Exception as failure:
            await session.rollback()
            # Contention (an exhausted raw pool, a lock timeout) is retryable: 503
            # database_busy, as at the inbound verbs — not a 500.
            busy = _contention(failure)
            reason = busy.code if busy is not None else "internal_error"
            await write_audit_now(self.sessionmaker, event.with_outcome(AuditOutcome.ERROR, reason))
            if busy is not None:
                raise busy from None
            raise
        await write_audit(session, event)
        return body

    # -- query -------------------------------------------------------------------------------

    async def query(
        self,
        session: AsyncSession,
        principal: AdminPrincipal,
        resource: str,
        parse: Callable[[], Awaitable[LocalQueryRequest]],
    ) -> dict[str, Any]:
        async def work(event: AuditEvent) -> tuple[dict[str, Any], AuditEvent]:
            body = await parse()
            user_id = await self._user(session, principal, body.as_user)
            event = event.with_outcome(AuditOutcome.ALLOWED, subject_user_id=user_id)
            if not known_resource(resource):
                raise NotFound("no such resource", code="unknown_resource")
            if body.query is not None and resource not in CONTENT_RESOURCES:
                raise BadRequest(
                    "search covers tasks, notes and credentials", code="invalid_search"
                )
            filters = _filters(resource, body.filter)
            target = await self._resolve(session, body.source)
            event = event.with_outcome(AuditOutcome.ALLOWED, target_id=_audit_target(target))
            spec = QuerySpec(
                resource=resource,
                limit=min(body.limit or self.default_limit, self.max_limit),
                query=body.query,
                filter=body.filter.model_dump(mode="json", exclude_none=True)
                if body.filter
                else None,
            )

            async def local() -> tuple[list[dict[str, Any]], bool]:
                return await self._local_rows(user_id, spec, filters)

            outcomes = await self.fanout.run(
                spec, local if target.include_local else None, target.connections
            )
            if body.source == "all":
                # Clients of connections that are gone or inactive are dropped (their circuit
                # rows stay, and go with the connection).
                self.pool.retain([row.id for row in target.connections])
            answer = {"resource": resource, "source": body.source, **merge(outcomes)}
            ok = sum(1 for outcome in outcomes if outcome.ok)
            state = "partial" if answer["_partial"] else "complete"
            _log_outcomes(outcomes)
            return answer, event.with_outcome(
                AuditOutcome.ALLOWED,
                f"{state}:{ok}/{len(outcomes)}",
                row_count=len(answer["items"]),
            )

        return await self.audited(session, principal, "local.query", resource, work)

    async def _user(
        self, session: AsyncSession, principal: AdminPrincipal, as_user: uuid.UUID | None
    ) -> uuid.UUID:
        if not principal.is_admin:
            assert principal.user_id is not None  # a user token always names its user
            if as_user is not None and as_user != principal.user_id:
                raise Forbidden("a user token queries as its own user", code="as_user_forbidden")
            return principal.user_id
        if as_user is None:
            raise Unprocessable(
                "an admin token must say which local user to query as (as_user)",
                code="as_user_required",
            )
        if not await repository.user_exists(session, as_user):
            raise NotFound("no such user", code="user_not_found")
        return as_user

    async def _resolve(self, session: AsyncSession, source: str) -> ResolvedSource:
        if source == LOCAL:
            return ResolvedSource(source, True, [])
        if source == "all":
            async with self.rows_pool.connection() as conn:
                return ResolvedSource(source, True, await reads.active_connections(conn))
        name = source.removeprefix("federated:")
        row = await repository.connection_by_name(session, name)
        if row is None:
            raise NotFound("no such connection", code="connection_not_found")
        if row.state != ConnectionState.ACTIVE:
            self.pool.drop(row.id)  # retired: its client (and unsealed key) goes now
            raise Conflict(
                f"the connection is {ConnectionState(row.state).value}",
                code="connection_not_active",
            )
        return ResolvedSource(source, False, [row])

    async def _local_rows(
        self, user_id: uuid.UUID, spec: QuerySpec, filters: reads.ContentFilters
    ) -> tuple[list[dict[str, Any]], bool]:
        # A connection of its own: the per-source timeout may cancel this task mid-query (the
        # pool drops a connection that comes back mid-statement), and the request's session must
        # stay usable for the audit row.
        async with self.rows_pool.connection() as conn:
            teams = await reads.member_team_ids(conn, user_id)
            rows = RowFilter(
                subject_user_id=user_id, include_personal=True, team_ids=teams, limit=spec.limit
            )
            if spec.resource in CONTENT_RESOURCES:
                found = await reads.list_content(
                    conn, spec.resource, rows, None, filters, search=spec.query
                )
            else:
                found = await reads.list_directory(conn, spec.resource, rows, None)
        page = found[: spec.limit]
        for row in page:
            row["_source"] = self.source_name
        return page, len(found) > spec.limit

    # -- capabilities of one connection -------------------------------------------------------

    async def capabilities(
        self, session: AsyncSession, principal: AdminPrincipal, name: str
    ) -> dict[str, Any]:
        async def work(event: AuditEvent) -> tuple[dict[str, Any], AuditEvent]:
            target = await self._resolve(session, federated(name))
            row = target.connections[0]
            event = event.with_outcome(AuditOutcome.ALLOWED, target_id=str(row.id))
            try:
                client = self.pool.client_for(ConnectionMaterial.from_row(row))
                capabilities = await client.capabilities()
            except FederationClientError as exc:
                code = exc.code if _CODE_RE.fullmatch(exc.code) else "peer_call_failed"
                raise PeerCallFailed(f"the peer call failed ({code})", code=code) from None
            body = {"connection": row.name, "source": target.source, **capabilities.as_dict()}
            return body, event

        return await self.audited(session, principal, "local.capabilities", None, work)


def _contention(failure: BaseException) -> DatabaseBusy | None:
    """``fedcore.db.contention_error``, also for the fan-out's task group: its exception group
    is contention when everything in it is (the local source's own query, say)."""
    if isinstance(failure, BaseExceptionGroup):
        found = [_contention(inner) for inner in failure.exceptions]
        return found[0] if found and all(busy is not None for busy in found) else None
    return contention_error(failure)


def _audit_target(target: ResolvedSource) -> str:
    if target.source.startswith("federated:"):
        return str(target.connections[0].id)
    return target.source


def _log_outcomes(outcomes: list[SourceOutcome]) -> None:
    # Metadata only: source, code, count, time — never a row.
    for outcome in outcomes:
        if not outcome.ok:
            log.info(
                "local query source failed",
                extra={
                    "source": outcome.source,
                    "code": outcome.code,
                    "elapsed_ms": round(outcome.elapsed_ms, 1),
                },
            )
