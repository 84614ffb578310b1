"""The client the other services use to talk to the ca-broker (internal network + service token).

Created once per app (in its lifespan) with explicit timeouts. Only connection failures are
retried: once a /sign request has reached the broker it may have issued a certificate.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from fedcore.errors import BadRequest, Conflict, DomainError, NotFound, UpstreamUnavailable


class CaUnavailable(UpstreamUnavailable):
    default_code = "ca_unavailable"


class CaRefused(DomainError):
    status_code = 502
    default_code = "ca_refused"


@dataclass(frozen=True)
class SignedCertificate:
    cert_pem: str
    cert_chain_pem: str
    serial: str
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime


class CaBrokerClient:
    def __init__(
        self,
        base_url: str,
        service_token: str,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``transport`` lets tests drive a real ca-broker app in-process."""
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {service_token}"},
            timeout=httpx.Timeout(timeout, connect=2.0),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(httpx.ConnectError),
                stop=stop_after_attempt(3),
                wait=wait_random_exponential(multiplier=0.05, max=0.5),
                reraise=True,
            ):
                with attempt:
                    return await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CaUnavailable(f"the CA is unreachable ({type(exc).__name__})") from None
        raise AssertionError("unreachable")  # pragma: no cover - AsyncRetrying reraises

    @staticmethod
    def _raise_for_error(response: httpx.Response) -> None:
        """Map the broker's answer to a domain error with a *fixed* public message: callers of
        enrollment are unauthenticated, so the CA's own wording stays internal."""
        if response.is_success:
            return
        try:
            code = str(response.json()["error"]["code"])
        except (ValueError, KeyError, TypeError):
            code = "ca_refused"
        if code == "invalid_csr":
            raise BadRequest("the certificate signing request was refused", code="invalid_csr")
        if response.status_code == 404:
            raise NotFound("the grant cannot receive a certificate", code=code)
        if response.status_code == 409:
            raise Conflict("the grant cannot receive a certificate", code=code)
        if response.status_code == 503:
            raise CaUnavailable("the certificate authority is unavailable", code=code)
        # Keep the broker's code (issuance_check_failed, ...) for the audit row.
        raise CaRefused("the certificate authority refused the request", code=code)

    async def sign(
        self,
        *,
        csr_pem: str,
        grant_id: uuid.UUID,
        subject_user_id: uuid.UUID,
        peer_id: uuid.UUID,
        ttl_seconds: int | None = None,
        grant_status: str | None = None,
        deadline_seconds: float | None = None,
    ) -> SignedCertificate:
        """``grant_status``: the state the caller saw under its locks (``pending`` for an
        enrollment, ``active`` for a renewal); the broker refuses to record the certificate if
        the grant has left it by the time the signature is done.

        ``deadline_seconds``: the whole call, retries included, for a caller holding row locks
        a revocation waits for (``503 ca_unavailable`` past it). The broker may still finish:
        its certificate was never handed out, and its last look plus the issuance lock keep it
        off a revoked or activated grant (fedcore.issuance_lock)."""
        if deadline_seconds is not None:
            try:
                async with asyncio.timeout(deadline_seconds):
                    return await self.sign(
                        csr_pem=csr_pem,
                        grant_id=grant_id,
                        subject_user_id=subject_user_id,
                        peer_id=peer_id,
                        ttl_seconds=ttl_seconds,
                        grant_status=grant_status,
                    )
            except TimeoutError:
                raise CaUnavailable("the CA did not answer in time") from None
        body: dict[str, Any] = {
            "csr_pem": csr_pem,
            "grant_id": str(grant_id),
            "subject_user_id": str(subject_user_id),
            "peer_id": str(peer_id),
        }
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        if grant_status is not None:
            body["grant_status"] = grant_status
        response = await self._send("POST", "/sign", json=body)
        self._raise_for_error(response)
        data = response.json()
        return SignedCertificate(
            cert_pem=data["cert_pem"],
            cert_chain_pem=data["cert_chain_pem"],
            serial=data["serial"],
            fingerprint_sha256=data["fingerprint_sha256"],
            not_before=datetime.fromisoformat(data["not_before"]),
            not_after=datetime.fromisoformat(data["not_after"]),
        )

    async def revoke(self, serial: str, reason: str) -> bool:
        """Revoke ``serial``; True if it was already revoked."""
        response = await self._send("POST", "/revoke", json={"serial": serial, "reason": reason})
        self._raise_for_error(response)
        return bool(response.json().get("already_revoked"))

    async def ca_bundle_pem(self) -> str:
        response = await self._send("GET", "/pki/ca.pem")
        self._raise_for_error(response)
        return response.text
