"""HTTP routes of the grants service: the admin API under ``/api/admin`` (docs/admin-api.md).

Every route needs an ``admin`` bearer token (``fedcore.admin_auth``). Handlers only translate
HTTP to service calls; the rules live in ``grants.service``.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import AwareDatetime

from fedcore.admin_auth import CurrentAdmin, require_admin
from fedcore.db import SessionDep
from fedcore.models import AuditOutcome, ConnectionState, GrantStatus, PeerState
from grants import schemas
from grants.repository import AuditFilters, GrantFilters
from grants.service import (
    AdminContext,
    AuditService,
    ConnectionService,
    GrantService,
    PeerService,
    TeamService,
    UserService,
)

router = APIRouter(prefix="/api/admin", dependencies=[Depends(require_admin)])

Limit = Annotated[int, Query(ge=1, le=schemas.MAX_LIST_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=200)]


async def admin_context(request: Request, session: SessionDep, admin: CurrentAdmin) -> AdminContext:
    return AdminContext(
        session=session,
        sessionmaker=request.app.state.sessionmaker,
        principal=admin,
        settings=request.app.state.settings,
        broker=request.app.state.broker,
    )


Ctx = Annotated[AdminContext, Depends(admin_context)]


# ------------------------------------------------------------------------------ users, teams


@router.post("/users", status_code=201, tags=["users"])
async def create_user(body: schemas.UserCreate, ctx: Ctx) -> schemas.UserOut:
    return await UserService.create(ctx, body)


@router.get("/users", tags=["users"])
async def list_users(
    session: SessionDep, limit: Limit = schemas.DEFAULT_LIST_LIMIT, cursor: Cursor = None
) -> schemas.Page[schemas.UserOut]:
    return await UserService.page(session, limit, cursor)


@router.get("/users/{user_id}", tags=["users"])
async def show_user(user_id: uuid.UUID, session: SessionDep) -> schemas.UserOut:
    return await UserService.get(session, user_id)


@router.post("/teams", status_code=201, tags=["teams"])
async def create_team(body: schemas.TeamCreate, ctx: Ctx) -> schemas.TeamOut:
    return await TeamService.create(ctx, body)


@router.get("/teams", tags=["teams"])
async def list_teams(
    session: SessionDep, limit: Limit = schemas.DEFAULT_LIST_LIMIT, cursor: Cursor = None
) -> schemas.Page[schemas.TeamOut]:
    return await TeamService.page(session, limit, cursor)


@router.get("/teams/{team_id}", tags=["teams"])
async def show_team(team_id: uuid.UUID, session: SessionDep) -> schemas.TeamOut:
    return await TeamService.get(session, team_id)


@router.get("/teams/{team_id}/members", tags=["teams"])
async def list_members(team_id: uuid.UUID, session: SessionDep) -> list[schemas.MembershipOut]:
    return await TeamService.members(session, team_id)


@router.post("/teams/{team_id}/members", status_code=201, tags=["teams"])
async def add_member(
    team_id: uuid.UUID, body: schemas.MembershipCreate, ctx: Ctx
) -> schemas.MembershipOut:
    return await TeamService.add_member(ctx, team_id, body)


# ------------------------------------------------------------------------------ peers


@router.post("/federation/peers", status_code=201, tags=["peers"])
async def create_peer(body: schemas.PeerCreate, ctx: Ctx) -> schemas.PeerOut:
    return await PeerService.create(ctx, body)


@router.get("/federation/peers", tags=["peers"])
async def list_peers(
    session: SessionDep,
    state: PeerState | None = None,
    limit: Limit = schemas.DEFAULT_LIST_LIMIT,
    cursor: Cursor = None,
) -> schemas.Page[schemas.PeerOut]:
    return await PeerService.page(session, state, limit, cursor)


@router.post("/federation/peers/keypair", status_code=201, tags=["outbound"])
async def create_keypair(body: schemas.KeypairCreate, ctx: Ctx) -> schemas.KeypairOut:
    return await ConnectionService.create_keypair(ctx, body)


@router.get("/federation/peers/{peer_id}", tags=["peers"])
async def show_peer(peer_id: uuid.UUID, session: SessionDep) -> schemas.PeerOut:
    return await PeerService.get(session, peer_id)


@router.patch("/federation/peers/{peer_id}/state", tags=["peers"])
async def change_peer_state(
    peer_id: uuid.UUID, body: schemas.PeerStateChange, ctx: Ctx
) -> schemas.PeerTransitionOut:
    return await PeerService.change_state(ctx, peer_id, body)


@router.patch("/federation/peers/{connection_id}/cert", tags=["outbound"])
async def attach_certificate(
    connection_id: uuid.UUID, body: schemas.ConnectionCert, ctx: Ctx
) -> schemas.ConnectionOut:
    return await ConnectionService.attach_certificate(ctx, connection_id, body)


@router.get("/federation/connections", tags=["outbound"])
async def list_connections(
    session: SessionDep,
    state: ConnectionState | None = None,
    limit: Limit = schemas.DEFAULT_LIST_LIMIT,
    cursor: Cursor = None,
) -> schemas.Page[schemas.ConnectionOut]:
    return await ConnectionService.page(session, state, limit, cursor)


@router.get("/federation/connections/{connection_id}", tags=["outbound"])
async def show_connection(connection_id: uuid.UUID, session: SessionDep) -> schemas.ConnectionOut:
    return await ConnectionService.get(session, connection_id)


@router.post("/federation/connections/{connection_id}/renew", tags=["outbound"])
async def renew_connection(connection_id: uuid.UUID, ctx: Ctx) -> schemas.ConnectionOut:
    return await ConnectionService.renew(ctx, connection_id)


@router.post("/federation/connections/{connection_id}/retire", tags=["outbound"])
async def retire_connection(connection_id: uuid.UUID, ctx: Ctx) -> schemas.ConnectionOut:
    return await ConnectionService.retire(ctx, connection_id)


@router.delete("/federation/connections/{connection_id}", status_code=204, tags=["outbound"])
async def delete_connection(connection_id: uuid.UUID, ctx: Ctx) -> Response:
    await ConnectionService.delete_inactive(ctx, connection_id)
    return Response(status_code=204)


# ------------------------------------------------------------------------------ grants


@router.post("/federation/grants", status_code=201, tags=["grants"])
async def create_grant(body: schemas.GrantCreate, ctx: Ctx) -> schemas.GrantOut:
    return await GrantService.create(ctx, body)


@router.get("/federation/grants", tags=["grants"])
async def list_grants(
    session: SessionDep,
    peer_id: uuid.UUID | None = None,
    status: GrantStatus | None = None,
    user_id: uuid.UUID | None = None,
    limit: Limit = schemas.DEFAULT_LIST_LIMIT,
    cursor: Cursor = None,
) -> schemas.Page[schemas.GrantOut]:
    filters = GrantFilters(peer_id=peer_id, status=status, subject_user_id=user_id)
    return await GrantService.page(session, filters, limit, cursor)


@router.get("/federation/grants/{grant_id}", tags=["grants"])
async def show_grant(grant_id: uuid.UUID, session: SessionDep) -> schemas.GrantOut:
    return await GrantService.get(session, grant_id)


@router.patch("/federation/grants/{grant_id}/revoke", tags=["grants"])
async def revoke_grant(
    grant_id: uuid.UUID,
    ctx: Ctx,
    body: Annotated[schemas.GrantRevoke | None, Body()] = None,
) -> schemas.GrantRevokeOut:
    return await GrantService.revoke(ctx, grant_id, body or schemas.GrantRevoke())


@router.post("/federation/grants/{grant_id}/tokens", status_code=201, tags=["grants"])
async def issue_token(
    grant_id: uuid.UUID,
    ctx: Ctx,
    body: Annotated[schemas.TokenCreate | None, Body()] = None,
) -> schemas.TokenOut:
    return await GrantService.issue_token(ctx, grant_id, body or schemas.TokenCreate())


# ------------------------------------------------------------------------------ audit


@router.get("/federation/audit", tags=["audit"])
async def list_audit(
    session: SessionDep,
    grant_id: uuid.UUID | None = None,
    peer_id: uuid.UUID | None = None,
    outcome: AuditOutcome | None = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    since: AwareDatetime | None = None,
    limit: Limit = schemas.DEFAULT_LIST_LIMIT,
    cursor: Cursor = None,
) -> schemas.Page[schemas.AuditOut]:
    filters = AuditFilters(
        grant_id=grant_id, peer_id=peer_id, outcome=outcome, action=action, since=since
    )
    return await AuditService.page(session, filters, limit, cursor)
