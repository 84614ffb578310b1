"""Signing backends. A backend turns (CSR public key + federation facts) into a certificate and
its chain; the broker checks the result itself afterwards, whatever the backend claims."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from fedcore.csr import ValidatedCsr


@dataclass(frozen=True)
class IssueRequest:
    csr: ValidatedCsr
    csr_pem: str
    peer_name: str
    peer_id: uuid.UUID
    grant_id: uuid.UUID
    subject_user_id: uuid.UUID
    lifetime: timedelta


@dataclass(frozen=True)
class IssuedChain:
    cert_pem: str
    chain_pem: str  # the intermediates, leaf excluded


class SigningBackend(Protocol):
    name: str

    async def issue(self, request: IssueRequest) -> IssuedChain: ...

    def bundle_pem(self) -> str:
        """Trust anchors peers and nginx use (PEM, may hold several certificates)."""
        ...

    def intermediates_pem(self) -> str: ...

    async def aclose(self) -> None: ...
