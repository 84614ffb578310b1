"""Bodies of the enrollment endpoint."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from fedcore.csr import MAX_CSR_PEM_BYTES


class EnrollmentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    csr_pem: str = Field(max_length=MAX_CSR_PEM_BYTES)


class EnrollmentResponse(BaseModel):
    cert_pem: str
    cert_chain_pem: str
    ca_bundle_pem: str
    grant_id: uuid.UUID
    subject_user_id: uuid.UUID
    peer_id: uuid.UUID
    not_after: datetime
    endpoint: str
