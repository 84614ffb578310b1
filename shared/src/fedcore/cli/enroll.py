"""``mosaic federation peer add ENROLLMENT_URL``: enroll this gateway (B) at another one (A).

1. The enrollment URL carries A's CA pin (``#ca_fp=<sha256 of A's root, DER>``), or the operator
   passes ``--ca-file``. Trust on first use is refused: without a pin there is no enrollment.
   Without ``--ca-file`` the bundle is fetched from A's ``/pki/ca.pem`` and accepted only if its
   root matches the pin (the download is unauthenticated, the pin is what authenticates it).
2. B's own admin API makes the key pair (P-256, sealed at rest on B) and the CSR; the private key
   never leaves B's grants service.
3. The CSR goes to A's enrollment URL over TLS verified against the pinned bundle.
4. B's admin API stores the certificate after checking that it holds B's key, carries both
   federation OIDs with the values A announced, and chains to the returned bundle, whose root
   must again match the pin.
Any failure after step 2 deletes the pending connection: nothing half-made remains on B.
"""

from __future__ import annotations

import contextlib
import re
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx

from fedcore import pki
from fedcore.cli.client import AdminClient, ConfigError, GatewayUnreachable, Refused

_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")
_ENROLL_PATH_RE = re.compile(r"^/api/federation/v1/enrollment/[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class EnrollmentUrl:
    base_url: str  # https://host:port of A's public listener
    enroll_url: str  # without the fragment: the token travels in the path only
    ca_fingerprint: str | None

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.base_url).hostname or "peer"


def parse_enrollment_url(url: str) -> EnrollmentUrl:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError("the enrollment URL must be an https URL")
    if not _ENROLL_PATH_RE.match(parts.path):
        if parts.path.startswith("/api/federation/v1/enrollment/"):
            raise ConfigError(
                "the enrollment URL's token is malformed (64 lowercase hex characters expected;"
                " was the URL cut off or changed?)"
            )
        raise ConfigError("the enrollment URL has no /api/federation/v1/enrollment/<token> path")
    fragment = urllib.parse.parse_qs(parts.fragment)
    pins = fragment.get("ca_fp", [])
    if len(pins) > 1 or (pins and not _FINGERPRINT_RE.match(pins[0])):
        raise ConfigError("the enrollment URL's ca_fp is not one SHA-256 hex fingerprint")
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", ""))
    return EnrollmentUrl(
        base_url=base,
        enroll_url=base + parts.path,
        ca_fingerprint=pins[0] if pins else None,
    )


def default_connection_name(enrollment: EnrollmentUrl) -> str:
    name = re.sub(r"[^A-Za-z0-9.-]", "-", enrollment.host).strip("-.") or "peer"
    return name[:63]


def _pinned_bundle(
    enrollment: EnrollmentUrl, ca_file_pem: str | None, timeout: float
) -> tuple[str, str]:
    """(bundle PEM, pin): exactly the pinned root and what it issued — nothing else is trusted
    for A's TLS server or for the returned certificate."""
    if ca_file_pem is not None:
        try:
            pin = enrollment.ca_fingerprint or pki.bundle_root_fingerprint(ca_file_pem)
            return pki.pinned_bundle(ca_file_pem, pin), pin
        except pki.PinMismatch as exc:
            raise Refused("ca_pin_mismatch", f"--ca-file: {exc}") from None
        except (ValueError, IndexError):
            raise ConfigError("--ca-file is not a PEM CA bundle") from None
    if enrollment.ca_fingerprint is None:
        raise ConfigError(
            "no CA pin: the enrollment URL has no #ca_fp=… and no --ca-file was given "
            "(trust on first use is not accepted)"
        )
    try:
        # Unverified download, verified content: what is kept is exactly the certificate the
        # pin names (and what it issued); anything else in the answer makes it a refusal.
        response = httpx.get(
            f"{enrollment.base_url}/pki/ca.pem",
            verify=False,  # noqa: S501 - the content is checked against the pin below
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise GatewayUnreachable(
            f"cannot fetch the peer's CA bundle ({type(exc).__name__})"
        ) from None
    if response.status_code != 200:
        raise Refused(
            "ca_bundle_unavailable", f"the peer's /pki/ca.pem answered {response.status_code}"
        )
    try:
        return pki.pinned_bundle(
            response.text, enrollment.ca_fingerprint
        ), enrollment.ca_fingerprint
    except pki.PinMismatch as exc:
        raise Refused("ca_pin_mismatch", f"the peer's CA bundle: {exc}") from None


# The peer answers 503 database_busy (Retry-After) when another enrollment, renewal or admin
# change of the same peer holds its row: nothing was used up, so asking again is safe.
_BUSY_RETRIES = 2


def _redeem(
    enrollment: EnrollmentUrl, bundle_pem: str, csr_pem: str, timeout: float
) -> dict[str, Any]:
    context = ssl.create_default_context(cadata=bundle_pem)
    for attempt in range(_BUSY_RETRIES + 1):
        try:
            response = httpx.post(
                enrollment.enroll_url, json={"csr_pem": csr_pem}, verify=context, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise GatewayUnreachable(
                f"cannot reach the peer's enrollment endpoint ({type(exc).__name__})"
            ) from None
        if response.status_code != 503 or attempt == _BUSY_RETRIES or not _busy(response):
            break
        time.sleep(_retry_after(response))
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if response.status_code != 201 or not isinstance(body, dict):
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise Refused(
            str(error.get("code", "enrollment_failed")),
            f"the peer refused the enrollment: {error.get('message', response.status_code)}",
        )
    return body


def _busy(response: httpx.Response) -> bool:
    try:
        body: Any = response.json()
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and error.get("code") == "database_busy"


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(5.0, max(0.1, float(response.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


def peer_add(
    api: AdminClient,
    url: str,
    *,
    name: str | None = None,
    ca_file_pem: str | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    enrollment = parse_enrollment_url(url)
    connection_name = name or default_connection_name(enrollment)
    if not _NAME_RE.match(connection_name):
        raise ConfigError("--name must be 1-63 characters of [A-Za-z0-9._-]")
    bundle_pem, pin = _pinned_bundle(enrollment, ca_file_pem, timeout)

    keypair = api.request(
        "POST",
        "/api/admin/federation/peers/keypair",
        json_body={"name": connection_name, "endpoint_url": enrollment.base_url},
    )
    connection_id = keypair["connection_id"]
    try:
        issued = _redeem(enrollment, bundle_pem, keypair["csr_pem"], timeout)
        try:
            # What B stores (and later trusts for every call to A) is only the pinned set.
            issued["ca_bundle_pem"] = pki.pinned_bundle(issued["ca_bundle_pem"], pin)
        except pki.PinMismatch as exc:
            raise Refused("ca_pin_mismatch", f"the returned CA bundle: {exc}") from None
        stored: dict[str, Any] = api.request(
            "PATCH",
            f"/api/admin/federation/peers/{connection_id}/cert",
            json_body={
                "cert_pem": issued["cert_pem"],
                "cert_chain_pem": issued["cert_chain_pem"],
                "ca_bundle_pem": issued["ca_bundle_pem"],
                "expected_grant_id": issued["grant_id"],
                "expected_subject_user_id": issued["subject_user_id"],
                "expected_ca_fingerprint_sha256": pin,
            },
        )
    except BaseException:
        with contextlib.suppress(Exception):
            api.request("DELETE", f"/api/admin/federation/connections/{connection_id}")
        raise
    return stored
