"""Request and response bodies of the admin API (``/api/admin/...``).

Requests forbid unknown keys, so a typo (``"reson"``) is a 422 instead of a silently ignored
field. Responses never carry a secret except the one place that must: the enrollment token,
returned exactly once by ``POST …/grants/{id}/tokens``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
)

from fedcore.models import AuditOutcome, ConnectionState, GrantStatus, PeerState
from fedcore.peer_transport import Origin
from grants.settings import MAX_ENROLLMENT_TOKEN_TTL

MAX_PEM_LENGTH = 64 * 1024
MAX_LIST_LIMIT = 500
DEFAULT_LIST_LIMIT = 100

# Peer and connection names end up as certificate common names (the broker sets CN = the peer's
# name): the same alphabet as fedcore.csr.COMMON_NAME_RE, so no name can be registered that
# could not be certified.
NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
USERNAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9._@-]{0,62}[A-Za-z0-9])?$"


def _endpoint_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("must be an https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials")
    if parts.query or parts.fragment:
        raise ValueError("must not contain a query or a fragment")
    try:  # what the federation client will dial: refused here, not at the first call
        Origin.of(httpx.URL(value))
    except (httpx.InvalidURL, httpx.UnsupportedProtocol):
        raise ValueError("must name a valid host name or address") from None
    return value.rstrip("/")


EndpointUrl = Annotated[str, Field(max_length=500), AfterValidator(_endpoint_url)]
Name = Annotated[str, Field(min_length=1, max_length=63, pattern=NAME_PATTERN)]
Reason = Annotated[str, Field(min_length=1, max_length=500)]
Pem = Annotated[str, Field(min_length=1, max_length=MAX_PEM_LENGTH)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """A page of a list; pass ``next_cursor`` back as ``cursor`` for the next one."""

    items: list[T]
    next_cursor: str | None


# ------------------------------------------------------------------------------ users, teams


class UserCreate(_Request):
    username: str = Field(min_length=1, max_length=64, pattern=USERNAME_PATTERN)
    display_name: str = Field(default="", max_length=200)


class UserOut(BaseModel):
    id: uuid.UUID
    username: str
    display_name: str
    created_at: datetime
    team_ids: list[uuid.UUID] = Field(default_factory=list)


class TeamCreate(_Request):
    name: str = Field(min_length=1, max_length=100, pattern=r"^\S(?:.*\S)?$")


class TeamOut(BaseModel):
    id: uuid.UUID
    name: str
    created_at: datetime
    member_ids: list[uuid.UUID] = Field(default_factory=list)


class MembershipCreate(_Request):
    user_id: uuid.UUID


class MembershipOut(BaseModel):
    team_id: uuid.UUID
    user_id: uuid.UUID
    created_at: datetime


# ------------------------------------------------------------------------------ peers


class PeerCreate(_Request):
    name: Name
    endpoint_url: EndpointUrl | None = None


class PeerOut(BaseModel):
    id: uuid.UUID
    name: str
    endpoint_url: str | None
    state: PeerState
    cert_serial: str | None
    cert_fingerprint_sha256: str | None
    cert_not_after: datetime | None
    created_at: datetime
    updated_at: datetime


class PeerStateChange(_Request):
    """``active`` resumes a suspended peer; ``suspended`` pauses an active one; ``revoked`` ends
    a peer for good (and revokes its live grants)."""

    state: Literal["active", "suspended", "revoked"]
    reason: Reason | None = None


class CertificateRevocationOut(BaseModel):
    serial: str
    status: Literal["revoked", "already_revoked", "recorded"]


class PeerTransitionOut(PeerOut):
    revoked_grant_ids: list[uuid.UUID] = Field(default_factory=list)
    certificate_revocations: list[CertificateRevocationOut] = Field(default_factory=list)


# ------------------------------------------------------------------------------ grants


class GrantCreate(_Request):
    subject_user_id: uuid.UUID
    peer_id: uuid.UUID
    # Validated by fedcore.scope in the service, so every scope problem is one 422 invalid_scope
    # with field paths under "scope" (see docs/admin-api.md for the schema).
    scope: dict[str, Any]
    expires_at: AwareDatetime | None = None


class GrantOut(BaseModel):
    id: uuid.UUID
    subject_user_id: uuid.UUID
    peer_id: uuid.UUID
    scope: dict[str, Any]
    status: GrantStatus
    expires_at: datetime | None
    activated_at: datetime | None
    revoked_at: datetime | None
    revoked_reason: str | None
    created_at: datetime


class GrantRevoke(_Request):
    reason: Reason | None = None


class GrantRevokeOut(GrantOut):
    revoked_token_count: int = 0
    certificate_revocations: list[CertificateRevocationOut] = Field(default_factory=list)


class TokenCreate(_Request):
    ttl_seconds: StrictInt | None = Field(default=None, ge=1, le=MAX_ENROLLMENT_TOKEN_TTL)
    peer_id: uuid.UUID | None = None
    revoke_others: StrictBool = False


class TokenOut(BaseModel):
    token: str = Field(description="shown once; only its SHA-256 is stored")
    token_id: uuid.UUID
    grant_id: uuid.UUID
    peer_id: uuid.UUID
    enrollment_url: str
    ca_fingerprint_sha256: str | None
    expires_at: datetime
    revoked_other_tokens: int


# ------------------------------------------------------------------------------ outbound


class KeypairCreate(_Request):
    name: Name
    endpoint_url: EndpointUrl


class KeypairOut(BaseModel):
    connection_id: uuid.UUID
    name: str
    endpoint_url: str | None
    state: ConnectionState
    csr_pem: str


class ConnectionCert(_Request):
    cert_pem: Pem
    cert_chain_pem: Pem
    ca_bundle_pem: Pem
    expected_grant_id: uuid.UUID | None = None
    expected_subject_user_id: uuid.UUID | None = None
    # Required: the bundle arrives with the certificate, so without a pin learnt out of band
    # (the enrollment URL's #ca_fp) it would be trusted on first use — whoever hands us the
    # certificate would also choose the root we trust for the connection's life.
    expected_ca_fingerprint_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ConnectionOut(BaseModel):
    id: uuid.UUID
    name: str
    endpoint_url: str | None
    state: ConnectionState
    remote_grant_id: uuid.UUID | None
    remote_subject_user_id: uuid.UUID | None
    cert_serial: str | None
    cert_not_after: datetime | None
    ca_fingerprint_sha256: str | None
    created_at: datetime
    updated_at: datetime


# ------------------------------------------------------------------------------ audit


class AuditOut(BaseModel):
    id: int
    created_at: datetime
    request_id: str
    actor_type: str
    actor_id: str | None
    action: str
    resource: str | None
    target_id: str | None
    grant_id: uuid.UUID | None
    peer_id: uuid.UUID | None
    subject_user_id: uuid.UUID | None
    outcome: AuditOutcome
    reason_code: str | None
    row_count: int | None
    cert_serial: str | None
