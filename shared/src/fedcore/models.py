"""The gateway's schema: SQLAlchemy 2 typed models. Alembic in ``fedcore.migrations`` is the only
thing that creates or alters these tables; services never run DDL.

Two groups:
- *native* data the verbs serve (a host application would own these): users, teams,
  team_members, tasks, notes, credentials. Every content row has ``owner_user_id`` and an optional
  ``team_id``; a user sees their own rows and the rows of teams they belong to.
- *federation* data: peers, grants, enrollment tokens, issued certificates, outbound connections,
  the append-only audit log, admin tokens, and the local CA's sealed key pairs.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    Enum,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TIMESTAMP

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: TIMESTAMP(timezone=True),
        uuid.UUID: UUID(as_uuid=True),
        dict[str, Any]: JSONB,
    }


def _pg_enum(enum_cls: type[enum.Enum], name: str) -> Enum:
    return Enum(
        enum_cls,
        name=name,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, default=uuid.uuid4)


def _created_at() -> Mapped[datetime]:
    return mapped_column(server_default=func.now())


# ---------------------------------------------------------------------------------------------
# Enums
# ---------------------------------------------------------------------------------------------


class PeerState(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


class GrantStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


class ConnectionState(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    REVOKED = "revoked"


class AuditOutcome(enum.StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    ERROR = "error"


class ActorType(enum.StrEnum):
    ADMIN_TOKEN = "admin_token"
    PEER = "peer"
    ENROLLMENT = "enrollment"
    SYSTEM = "system"


class AdminRole(enum.StrEnum):
    ADMIN = "admin"
    USER = "user"


class TaskStatus(enum.StrEnum):
    TODO = "todo"
    IN_PROGRESS = "in_progress"
    DONE = "done"


class CaKeyRole(enum.StrEnum):
    ROOT = "root"
    INTERMEDIATE = "intermediate"


# ---------------------------------------------------------------------------------------------
# Native data
# ---------------------------------------------------------------------------------------------


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = _uuid_pk()
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = _created_at()


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = _created_at()


class TeamMember(Base):
    __tablename__ = "team_members"

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = _created_at()

    # "which teams is this user in" is the hot lookup of the permission rule.
    __table_args__ = (Index("ix_team_members_user_id", "user_id"),)


class _ContentRow:
    """Columns every content table shares; the indexes serve keyset pagination per owner/team."""

    id: Mapped[uuid.UUID] = _uuid_pk()
    title: Mapped[str] = mapped_column(String(500))
    body: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    search_vector: Mapped[str] = mapped_column(
        TSVECTOR,
        Computed("to_tsvector('simple'::regconfig, title || ' ' || body)", persisted=True),
    )


def _content_indexes(table: str) -> tuple[Index, ...]:
    return (
        Index(f"ix_{table}_owner_user_id_id", "owner_user_id", "id"),
        Index(f"ix_{table}_team_id_id", "team_id", "id"),
        Index(f"ix_{table}_search_vector", "search_vector", postgresql_using="gin"),
    )


# Content rows' team_id is ON DELETE RESTRICT, not SET NULL: a team row whose team vanished would
# turn "personal" and match include_personal grants it was never part of (fedcore.scope_evaluator;
# migration 0004). Move or delete a team's rows before the team.


class Task(_ContentRow, Base):
    __tablename__ = "tasks"

    owner_user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    team_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("teams.id", ondelete="RESTRICT"))
    status: Mapped[TaskStatus] = mapped_column(
        _pg_enum(TaskStatus, "task_status"), default=TaskStatus.TODO
    )
    __table_args__ = _content_indexes("tasks")


class Note(_ContentRow, Base):
    __tablename__ = "notes"

    owner_user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    team_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("teams.id", ondelete="RESTRICT"))
    __table_args__ = _content_indexes("notes")


class Credential(_ContentRow, Base):
    __tablename__ = "credentials"

    owner_user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    team_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("teams.id", ondelete="RESTRICT"))
    login: Mapped[str] = mapped_column(String(200), default="")
    __table_args__ = _content_indexes("credentials")


# ---------------------------------------------------------------------------------------------
# Federation
# ---------------------------------------------------------------------------------------------


class FederationPeer(Base):
    """A counterparty that may call our verbs."""

    __tablename__ = "federation_peers"

    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(63), unique=True)
    endpoint_url: Mapped[str | None] = mapped_column(String(500))
    state: Mapped[PeerState] = mapped_column(
        _pg_enum(PeerState, "peer_state"), default=PeerState.PENDING
    )
    cert_serial: Mapped[str | None] = mapped_column(String(64))
    cert_fingerprint_sha256: Mapped[str | None] = mapped_column(String(64))
    cert_not_after: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class FederationGrant(Base):
    """ "Local user U lets peer P read this scope of U's data"."""

    __tablename__ = "federation_grants"

    id: Mapped[uuid.UUID] = _uuid_pk()
    subject_user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    peer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("federation_peers.id", ondelete="RESTRICT")
    )
    scope: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[GrantStatus] = mapped_column(
        _pg_enum(GrantStatus, "grant_status"), default=GrantStatus.PENDING
    )
    expires_at: Mapped[datetime | None] = mapped_column()
    activated_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    revoked_reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        Index("ix_federation_grants_peer_id_status", "peer_id", "status"),
        Index("ix_federation_grants_subject_user_id", "subject_user_id"),
    )


class FederationEnrollmentToken(Base):
    """A single-use enrollment token; only its SHA-256 is stored."""

    __tablename__ = "federation_enrollment_tokens"

    id: Mapped[uuid.UUID] = _uuid_pk()
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    grant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("federation_grants.id", ondelete="CASCADE")
    )
    peer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("federation_peers.id", ondelete="CASCADE")
    )
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (Index("ix_federation_enrollment_tokens_grant_id", "grant_id"),)


class FederationCertificate(Base):
    """Every certificate the CA issued; the source of the CRL and of revocation checks."""

    __tablename__ = "federation_certificates"

    id: Mapped[uuid.UUID] = _uuid_pk()
    serial: Mapped[str] = mapped_column(String(64), unique=True)
    grant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("federation_grants.id", ondelete="RESTRICT")
    )
    peer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("federation_peers.id", ondelete="RESTRICT")
    )
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    subject_cn: Mapped[str] = mapped_column(String(64))
    backend: Mapped[str] = mapped_column(String(16))
    not_before: Mapped[datetime] = mapped_column()
    not_after: Mapped[datetime] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    revoked_reason: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        Index("ix_federation_certificates_grant_id", "grant_id"),
        Index("ix_federation_certificates_revoked_at", "revoked_at"),
    )


class FederationConnection(Base):
    """Outbound: our enrolled identity at another gateway. The private key is sealed."""

    __tablename__ = "federation_connections"

    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(63), unique=True)
    endpoint_url: Mapped[str | None] = mapped_column(String(500))
    state: Mapped[ConnectionState] = mapped_column(
        _pg_enum(ConnectionState, "connection_state"), default=ConnectionState.PENDING
    )
    remote_grant_id: Mapped[uuid.UUID | None] = mapped_column()
    remote_subject_user_id: Mapped[uuid.UUID | None] = mapped_column()
    cert_pem: Mapped[str | None] = mapped_column(Text)
    cert_chain_pem: Mapped[str | None] = mapped_column(Text)
    ca_bundle_pem: Mapped[str | None] = mapped_column(Text)
    ca_fingerprint_sha256: Mapped[str | None] = mapped_column(String(64))
    cert_serial: Mapped[str | None] = mapped_column(String(64))
    cert_not_after: Mapped[datetime | None] = mapped_column()
    sealed_private_key: Mapped[bytes] = mapped_column(LargeBinary)
    csr_pem: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        # An active connection without a certificate would be half-made: refuse it in the schema.
        CheckConstraint(
            "state <> 'active' OR (cert_pem IS NOT NULL AND remote_grant_id IS NOT NULL)",
            name="active_has_cert",
        ),
    )


class FederationCircuit(Base):
    """The circuit breaker of one outbound connection, shared by every verbs worker and replica
    (verbs.circuit). No row, or ``opened_at`` NULL, means closed."""

    __tablename__ = "federation_circuits"

    connection_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("federation_connections.id", ondelete="CASCADE"), primary_key=True
    )
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_code: Mapped[str | None] = mapped_column(String(64))
    opened_at: Mapped[datetime | None] = mapped_column()
    # When the one half-open probe went out (claimed with a conditional UPDATE).
    probe_started_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class FederationAuditLog(Base):
    """Append-only record of every admin action, enrollment attempt and verb call."""

    __tablename__ = "federation_audit_log"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    created_at: Mapped[datetime] = _created_at()
    request_id: Mapped[str] = mapped_column(String(64))
    actor_type: Mapped[ActorType] = mapped_column(_pg_enum(ActorType, "audit_actor_type"))
    actor_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str | None] = mapped_column(String(64))
    target_id: Mapped[str | None] = mapped_column(String(64))
    grant_id: Mapped[uuid.UUID | None] = mapped_column()
    peer_id: Mapped[uuid.UUID | None] = mapped_column()
    subject_user_id: Mapped[uuid.UUID | None] = mapped_column()
    outcome: Mapped[AuditOutcome] = mapped_column(_pg_enum(AuditOutcome, "audit_outcome"))
    reason_code: Mapped[str | None] = mapped_column(String(64))
    row_count: Mapped[int | None] = mapped_column(Integer)
    cert_serial: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_federation_audit_log_created_at", created_at.desc()),
        Index("ix_federation_audit_log_grant_id_created_at", "grant_id", "created_at"),
    )


class AdminToken(Base):
    """Bearer tokens for the admin listener; only the SHA-256 is stored."""

    __tablename__ = "admin_tokens"

    id: Mapped[uuid.UUID] = _uuid_pk()
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(100), default="")
    role: Mapped[AdminRole] = mapped_column(_pg_enum(AdminRole, "admin_role"))
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        CheckConstraint("role <> 'user' OR user_id IS NOT NULL", name="user_role_has_user"),
    )


class CaKeyPair(Base):
    """The local CA's root and intermediate. The private key is sealed (AES-256-GCM)."""

    __tablename__ = "ca_keypairs"

    id: Mapped[uuid.UUID] = _uuid_pk()
    role: Mapped[CaKeyRole] = mapped_column(_pg_enum(CaKeyRole, "ca_key_role"))
    cert_pem: Mapped[str] = mapped_column(Text)
    sealed_private_key: Mapped[bytes] = mapped_column(LargeBinary)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        # One active key pair per role: the issuing intermediate is never ambiguous.
        Index(
            "uq_ca_keypairs_active_role",
            "role",
            unique=True,
            postgresql_where="active",
        ),
    )


class CaCrlState(Base):
    """Monotonic CRL number (RFC 5280 requires it to increase)."""

    __tablename__ = "ca_crl_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    crl_number: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (CheckConstraint("id = 1", name="singleton"),)
