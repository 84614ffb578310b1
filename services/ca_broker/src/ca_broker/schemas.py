"""Request and response bodies of the broker's internal API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fedcore.csr import MAX_CSR_PEM_BYTES


class SignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    csr_pem: str = Field(max_length=MAX_CSR_PEM_BYTES)
    grant_id: uuid.UUID
    subject_user_id: uuid.UUID
    peer_id: uuid.UUID
    ttl_seconds: int | None = Field(default=None, ge=60)
    # What the caller saw under its locks: enrollment signs for a pending grant, renewal for an
    # active one. The broker's last look (after signing) refuses any other state, so a
    # signature that finishes after its caller gave up and the grant moved on is never recorded.
    grant_status: Literal["pending", "active"] | None = None


class SignResponse(BaseModel):
    cert_pem: str
    cert_chain_pem: str
    serial: str
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    serial: str = Field(pattern=r"^[0-9a-f]{1,64}$")
    reason: str = Field(default="unspecified", min_length=1, max_length=200)


class RevokeResponse(BaseModel):
    serial: str
    revoked_at: datetime
    already_revoked: bool
    crl_number: int | None
