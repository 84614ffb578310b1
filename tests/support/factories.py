"""Rows the tests need (users, teams, peers, grants), inserted through the real models."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from fedcore import pki
from fedcore.federation_client import ConnectionMaterial
from fedcore.models import (
    FederationEnrollmentToken,
    FederationGrant,
    FederationPeer,
    GrantStatus,
    PeerState,
    Team,
    User,
)
from fedcore.pki import utcnow
from fedcore.sealing import PURPOSE_CONNECTION_KEY, Sealer
from fedcore.tokens import hash_token, new_token
from tests.support.db import execute

DEFAULT_SCOPE: dict[str, Any] = {
    "resources": ["tasks", "notes"],
    "excluded_resources": [],
    "include_teams": [],
    "include_personal": True,
    "max_rows_per_query": 50,
}


@dataclass(frozen=True)
class GrantFixture:
    user_id: uuid.UUID
    peer_id: uuid.UUID
    peer_name: str
    grant_id: uuid.UUID


async def create_user(session: AsyncSession, username: str | None = None) -> User:
    user = User(username=username or f"user-{secrets.token_hex(4)}", display_name="Test User")
    session.add(user)
    await session.flush()
    return user


async def create_team(session: AsyncSession, name: str | None = None) -> Team:
    team = Team(name=name or f"team-{secrets.token_hex(4)}")
    session.add(team)
    await session.flush()
    return team


async def create_peer(
    session: AsyncSession, name: str | None = None, state: PeerState = PeerState.PENDING
) -> FederationPeer:
    peer = FederationPeer(name=name or f"peer-{secrets.token_hex(4)}", state=state)
    session.add(peer)
    await session.flush()
    return peer


async def create_grant_fixture(
    database_url: str,
    status: GrantStatus = GrantStatus.PENDING,
    scope: dict[str, Any] | None = None,
    user_id: uuid.UUID | None = None,
) -> GrantFixture:
    """A peer and a grant to it (for ``user_id``, or a new user), committed."""
    engine = create_async_engine(database_url)
    try:
        async with async_sessionmaker(engine)() as session:
            if user_id is None:
                user_id = (await create_user(session)).id
            peer = await create_peer(session)
            grant = FederationGrant(
                subject_user_id=user_id,
                peer_id=peer.id,
                scope=scope or DEFAULT_SCOPE,
                status=status,
            )
            session.add(grant)
            await session.flush()
            fixture = GrantFixture(user_id, peer.id, peer.name, grant.id)
            await session.commit()
            return fixture
    finally:
        await engine.dispose()


async def create_enrollment_token(
    database_url: str, fx: GrantFixture, ttl: timedelta = timedelta(minutes=15)
) -> str:
    """Store an enrollment token the way the grants service does (hash only); return it."""
    token = new_token()
    engine = create_async_engine(database_url)
    try:
        async with async_sessionmaker(engine)() as session:
            session.add(
                FederationEnrollmentToken(
                    token_hash=hash_token(token),
                    grant_id=fx.grant_id,
                    peer_id=fx.peer_id,
                    expires_at=utcnow() + ttl,
                )
            )
            await session.commit()
    finally:
        await engine.dispose()
    return token


def connection_material(
    sealer: Sealer,
    endpoint: str = "https://peer.example:8443",
    connection_id: uuid.UUID | None = None,
) -> ConnectionMaterial:
    """An outbound connection's material: a real client certificate from a fresh CA, its key
    sealed under ``sealer``."""
    hierarchy = pki.generate_ca_hierarchy("peer")
    key, cert = pki.issue_server_certificate(
        hierarchy.intermediate_key, hierarchy.intermediate_cert, ["client"]
    )
    return ConnectionMaterial(
        id=connection_id or uuid.uuid4(),
        name="peer",
        endpoint_url=endpoint,
        cert_pem=pki.cert_pem(cert),
        cert_chain_pem=pki.cert_pem(cert) + hierarchy.chain_pem,
        ca_bundle_pem=hierarchy.bundle_pem,
        sealed_private_key=sealer.seal(pki.private_key_pem(key), purpose=PURPOSE_CONNECTION_KEY),
    )


def insert_connection(url: str, state: str = "pending", name: str | None = None) -> uuid.UUID:
    """A bare outbound connection row (test-only SQL; no usable key): an active or revoked one
    carries the certificate and remote grant the schema requires of it."""
    connection_id = uuid.uuid4()
    made = state != "pending"
    execute(
        url,
        "INSERT INTO federation_connections (id, name, state, cert_pem, remote_grant_id, "
        "sealed_private_key) VALUES (%s, %s, %s, %s, %s, %s)",
        (
            connection_id,
            name or f"c-{connection_id.hex[:8]}",
            state,
            "PEM" if made else None,
            uuid.uuid4() if made else None,
            b"\x00",
        ),
    )
    return connection_id
