"""Bearer-token authentication for the admin listener (grants) and the local query API (verbs).

Tokens are 32 random bytes as hex (:func:`fedcore.tokens.new_token`); ``admin_tokens`` stores
only their SHA-256. A presented token is hashed and looked up by that hash (the unique index is
the lookup key, so a database leak yields nothing usable and a timing difference in the index
walk says nothing about any valid token); the fetched row's hash is compared again with
``hmac.compare_digest``.

Answers:

* no ``Authorization: Bearer`` header                    -> ``401 admin_token_required``
* malformed, unknown or revoked token                    -> ``401 admin_token_invalid``
* a ``user`` token on a route that needs the admin role  -> ``403 admin_role_required``

Refusals are audited (``admin.authenticate``, outcome ``denied``) in a transaction of their own.
The token itself is never logged, audited or echoed; the audit row names the token *id* when
one is known.

Use the ``Annotated`` aliases in route signatures::

    async def revoke(..., admin: CurrentAdmin) -> ...
    async def query(..., principal: CurrentUserOrAdmin) -> ...
"""

from __future__ import annotations

import hmac
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fedcore.audit import AuditEvent, write_audit_now
from fedcore.db import SessionDep
from fedcore.errors import DomainError, Forbidden, Unauthorized
from fedcore.models import ActorType, AdminRole, AdminToken, AuditOutcome
from fedcore.tokens import hash_token

log = logging.getLogger("fedcore.admin_auth")

AUDIT_ACTION: Final = "admin.authenticate"
# What fedcore.tokens.new_token produces. Anything else cannot be a token of ours, so it is
# refused before touching the database.
_TOKEN_RE: Final = re.compile(r"[0-9a-f]{64}", re.ASCII)


@dataclass(frozen=True)
class AdminPrincipal:
    """Who is calling: the token's id (for audit rows), its role and, for ``user``, the user."""

    token_id: uuid.UUID
    role: AdminRole
    user_id: uuid.UUID | None

    @property
    def is_admin(self) -> bool:
        return self.role is AdminRole.ADMIN

    @property
    def actor_id(self) -> str:
        return str(self.token_id)


class AdminTokenRequired(Unauthorized):
    default_code = "admin_token_required"

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": 'Bearer realm="mosaic-admin"'}


class AdminTokenInvalid(Unauthorized):
    default_code = "admin_token_invalid"

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": 'Bearer realm="mosaic-admin", error="invalid_token"'}


class AdminRoleRequired(Forbidden):
    default_code = "admin_role_required"


def bearer_token(request: Request) -> str | None:
    """The bearer credential of the request, or ``None`` when there is none."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, credential = header.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return None
    return credential


async def lookup_token(session: AsyncSession, token: str) -> AdminPrincipal | None:
    """The principal a token stands for, or ``None`` if it is malformed, unknown or revoked."""
    if _TOKEN_RE.fullmatch(token) is None:
        return None
    presented_hash = hash_token(token)
    row = (
        await session.execute(select(AdminToken).where(AdminToken.token_hash == presented_hash))
    ).scalar_one_or_none()
    if row is None or not hmac.compare_digest(row.token_hash, presented_hash):
        return None
    if row.revoked:
        return None
    return AdminPrincipal(token_id=row.id, role=row.role, user_id=row.user_id)


async def _audit_refusal(request: Request, error: DomainError, token_id: uuid.UUID | None) -> None:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    event = AuditEvent(
        actor_type=ActorType.ADMIN_TOKEN,
        actor_id=str(token_id) if token_id else None,
        action=AUDIT_ACTION,
        outcome=AuditOutcome.DENIED,
        reason_code=error.code,
    )
    try:
        await write_audit_now(sessionmaker, event)
    except Exception as exc:  # the refusal stands even if its audit row cannot be written
        log.error("could not audit an authentication refusal", extra={"error": type(exc).__name__})


async def authenticate(request: Request, session: SessionDep) -> AdminPrincipal:
    """Any valid token (``admin`` or ``user``); 401 otherwise."""
    token = bearer_token(request)
    if token is None:
        error: DomainError = AdminTokenRequired("an admin API bearer token is required")
        await _audit_refusal(request, error, None)
        raise error
    principal = await lookup_token(session, token)
    if principal is None:
        error = AdminTokenInvalid("the bearer token is not valid")
        await _audit_refusal(request, error, None)
        raise error
    return principal


async def require_admin(
    request: Request, principal: Annotated[AdminPrincipal, Depends(authenticate)]
) -> AdminPrincipal:
    """An ``admin`` token; a ``user`` token gets 403 ``admin_role_required``."""
    if not principal.is_admin:
        error = AdminRoleRequired("this route needs an admin token")
        await _audit_refusal(request, error, principal.token_id)
        raise error
    return principal


CurrentAdmin = Annotated[AdminPrincipal, Depends(require_admin)]
CurrentUserOrAdmin = Annotated[AdminPrincipal, Depends(authenticate)]
