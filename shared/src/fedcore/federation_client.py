"""The outbound federation client: this gateway (B) calling another gateway's (A's) verbs over
mTLS with one of its ``federation_connections``.

(The issue calls this module ``fedcore.client``; that name is close to ``fedcore.cli.client``,
the admin CLI's HTTP client, so it is ``fedcore.federation_client``.)

* The TLS identity is built from the connection row: the private key is unsealed in memory and
  loaded into the ``SSLContext`` through an anonymous in-memory file (``memfd_create``), so it
  never touches a file system. Where that is not available it goes through a ``0600`` temporary
  file (in ``/dev/shm`` when it exists), encrypted under a random one-time password and removed
  right after ``load_cert_chain``.
* The remote server is verified against the connection's *pinned* CA bundle only (no system
  roots, hostname checked against the subjectAltName, strict X.509, no renegotiation), TLS 1.2+.
* Requests go over :mod:`fedcore.peer_transport` (HTTP/1.1 over asyncio TLS, bound to the
  connection's endpoint), straight to the transport: no httpx client layer, no redirects, no
  proxy or netrc from the environment, ``Accept-Encoding: identity``.
* Explicit timeouts on every phase and a deadline for the whole call; only connection failures
  (never a TLS verification failure, never a request that reached the peer) are retried, and
  only for the idempotent read verbs, with jittered exponential backoff.
* Answers are read with a size cap; a non-2xx answer raises :class:`PeerRefused` carrying the
  peer's error code. No answer is ever written anywhere: the caller gets Python objects.
* ``renew`` asks the peer for a new certificate (``POST /renew``, not retried: not idempotent).
* :class:`FederationClientPool` caches one client per connection and drops it when the
  connection's certificate, chain, CA bundle, sealed key or endpoint changes (or the
  connection goes away).

Exception tree (none is a :class:`~fedcore.errors.DomainError`: a peer's failure is reported by
the caller, never turned into this gateway's own HTTP error)::

    FederationClientError          .code (stable, snake_case), .status (HTTP status or None)
    ├── PeerRefused                the peer answered non-2xx; .code is the peer's error code
    ├── PeerUnreachable            no TCP connection (peer_unreachable) or a failed TLS
    │                              handshake (peer_tls_failed)
    ├── PeerTimeout                a phase timed out (peer_timeout)
    ├── PeerProtocolError          2xx but not the agreed JSON (peer_invalid_response,
    │                              peer_response_too_large)
    └── ConnectionUnusable         the local connection row cannot make a client
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import secrets
import ssl
import tempfile
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import orjson
from cryptography.hazmat.primitives import serialization
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from fedcore import pki
from fedcore.peer_transport import PeerTransport
from fedcore.sealing import PURPOSE_CONNECTION_KEY, Sealer, SealingError

VERBS_PREFIX: Final = "/api/federation/v1"
DEFAULT_MAX_RESPONSE_BYTES: Final = 8 * 1024 * 1024
MAX_CONNECTIONS_PER_PEER: Final = 20
MAX_KEEPALIVE_PER_PEER: Final = 10
USER_AGENT: Final = "mosaic-federation-client"
_RESOURCE_RE: Final = re.compile(r"[a-z][a-z_]{0,31}", re.ASCII)
# Codes a peer may send are echoed to our callers: keep them short and plain.
_CODE_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)


class FederationClientError(Exception):
    """A call to a peer failed. ``code`` is safe to show; the message never holds key material."""

    default_code: str = "federation_error"
    #: whether this failure says "the peer is not there" (feeds a circuit breaker)
    peer_down: bool = True

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code or self.default_code
        self.status = status


class PeerRefused(FederationClientError):
    default_code = "peer_refused"

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code, status=status)
        # The peer answered: it is up. Only a gateway-side failure (5xx: its nginx could not
        # reach its services, …) counts as "down".
        self.peer_down = status >= 500


class PeerUnreachable(FederationClientError):
    default_code = "peer_unreachable"


class PeerTimeout(FederationClientError):
    default_code = "peer_timeout"


class PeerProtocolError(FederationClientError):
    default_code = "peer_invalid_response"


class ConnectionUnusable(FederationClientError):
    default_code = "connection_unusable"
    peer_down = False


# ------------------------------------------------------------------------------ material


@dataclass(frozen=True)
class ConnectionMaterial:
    """What a client is built from: the parts of a ``federation_connections`` row."""

    id: uuid.UUID
    name: str
    endpoint_url: str
    cert_pem: str
    cert_chain_pem: str
    ca_bundle_pem: str
    sealed_private_key: bytes = field(repr=False)
    cert_serial: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> ConnectionMaterial:
        """From a ``FederationConnection`` (or anything with its attributes / keys)."""
        get: Callable[[str], Any] = (
            row.get if isinstance(row, Mapping) else lambda key: getattr(row, key)
        )
        endpoint_url, cert_pem = get("endpoint_url"), get("cert_pem")
        ca_bundle_pem, sealed_private_key = get("ca_bundle_pem"), get("sealed_private_key")
        if not (endpoint_url and cert_pem and ca_bundle_pem and sealed_private_key):
            raise ConnectionUnusable("the connection has no certificate or endpoint yet")
        return cls(
            id=get("id"),
            name=get("name"),
            endpoint_url=str(endpoint_url).rstrip("/"),
            cert_pem=cert_pem,
            cert_chain_pem=get("cert_chain_pem") or "",
            ca_bundle_pem=ca_bundle_pem,
            sealed_private_key=bytes(sealed_private_key),
            cert_serial=get("cert_serial"),
        )

    def same_identity(self, other: ConnectionMaterial) -> bool:
        """The same TLS identity and target: a cached client is reused only while this holds
        (a renewed certificate or a moved endpoint gets a fresh client). Compared field by
        field — equal strings compare at memcmp speed; hashing them on every call of a fan-out
        cost ~20 us per source."""
        return (
            self.endpoint_url == other.endpoint_url
            and self.cert_pem == other.cert_pem
            and self.cert_chain_pem == other.cert_chain_pem
            and self.ca_bundle_pem == other.ca_bundle_pem
            and self.sealed_private_key == other.sealed_private_key
        )


def _identity_pem(material: ConnectionMaterial) -> bytes:
    """Leaf first, then the chain's other certificates (deduplicated, order kept)."""
    try:
        leaf = pki.load_pem_chain(material.cert_pem)
        chain = pki.load_pem_chain(material.cert_chain_pem) if material.cert_chain_pem else []
    except ValueError:
        raise ConnectionUnusable("the connection's certificate does not parse") from None
    if len(leaf) != 1:
        raise ConnectionUnusable("the connection's certificate is not one certificate")
    seen = {pki.fingerprint_sha256(leaf[0])}
    parts = [pki.cert_pem(leaf[0])]
    for cert in chain:
        fingerprint = pki.fingerprint_sha256(cert)
        if fingerprint not in seen:
            seen.add(fingerprint)
            parts.append(pki.cert_pem(cert))
    return "".join(parts).encode()


def _load_from_memory(context: ssl.SSLContext, key_pem: bytes, certs_pem: bytes) -> bool:
    """Load key + chain through an anonymous memory file; False where that is unavailable."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None or not Path("/proc/self/fd").is_dir():
        return False
    fd = memfd_create("mosaic-connection-identity", getattr(os, "MFD_CLOEXEC", 0))
    try:
        data = memoryview(key_pem + certs_pem)
        while data:
            written = os.write(fd, data)
            data = data[written:]
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return True


def _load_from_temp_file(context: ssl.SSLContext, key_pem: bytes, certs_pem: bytes) -> None:
    """Fallback: a 0600 O_EXCL temporary file (tmpfs if there is one) holding the key encrypted
    under a one-time password that only this function knows, unlinked right after loading."""
    password = secrets.token_urlsafe(32).encode()
    key = serialization.load_pem_private_key(key_pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    shm = Path("/dev/shm")  # noqa: S108 - tmpfs: the (encrypted) key never reaches a disk
    directory = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    fd, name = tempfile.mkstemp(prefix=".mosaic-identity-", dir=directory)  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(encrypted + certs_pem)
        context.load_cert_chain(name, password=password)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def build_ssl_context(
    material: ConnectionMaterial, sealer: Sealer, *, prefer_memory: bool = True
) -> ssl.SSLContext:
    """Client TLS context: our certificate + unsealed key, the peer verified against the pin."""
    # What ssl.create_default_context(SERVER_AUTH, cadata=...) builds — hostname check,
    # certificate required, only the pinned bundle — without reading SSLKEYLOGFILE: the
    # environment must not make this process open a file for its TLS session secrets.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=material.ca_bundle_pem)
    except (ssl.SSLError, ValueError):
        raise ConnectionUnusable("the connection's CA bundle does not load") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Explicit, not left to the Python version's defaults: no TLS 1.2 renegotiation, the name
    # checked against subjectAltName only, strict X.509 (the gateway PKI is RFC 5280 clean).
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.hostname_checks_common_name = False
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    certs_pem = _identity_pem(material)
    try:
        key_pem = sealer.unseal(material.sealed_private_key, purpose=PURPOSE_CONNECTION_KEY)
    except SealingError:
        raise ConnectionUnusable("the connection's private key cannot be unsealed") from None
    try:
        if not (prefer_memory and _load_from_memory(context, key_pem, certs_pem)):
            _load_from_temp_file(context, key_pem, certs_pem)
    except (ssl.SSLError, ValueError, OSError):
        # The OpenSSL message may name the key file; report a fixed text.
        raise ConnectionUnusable("the connection's key and certificate do not load") from None
    return context


# ------------------------------------------------------------------------------ answers


@dataclass(frozen=True)
class ClientTimeouts:
    connect: float = 2.0
    read: float = 5.0  # each wait for bytes: a peer trickling its answer resets it
    write: float = 5.0
    pool: float = 2.0
    total: float | None = None  # one call, all of it; None: the phases back to back

    def httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)

    @property
    def call_deadline(self) -> float:
        """Bounds a whole call, so a peer that keeps each read just inside the read timeout
        (or sends 1xx answers forever) cannot hold a caller without a deadline of its own."""
        if self.total is not None:
            return self.total
        return self.connect + self.write + self.read + self.pool


@dataclass(frozen=True)
class Capabilities:
    resources: list[str]
    excluded_resources: list[str]
    max_rows_per_query: int
    supported_verbs: list[str]
    grant_id: str
    subject_user_id: str
    expires_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RenewedCertificate:
    cert_pem: str
    cert_chain_pem: str
    serial: str
    not_after: str


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None
    truncated: bool


def _is_retryable(exc: BaseException) -> bool:
    """A TCP connection that could not be made; not a TLS failure (retrying cannot fix a
    certificate) and nothing that may have reached the peer."""
    return isinstance(exc, httpx.ConnectError) and not _caused_by_tls(exc)


def _caused_by_tls(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _peer_code(response: httpx.Response, body: Any) -> tuple[str, str]:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        if isinstance(code, str) and _CODE_RE.fullmatch(code):
            return code, str(message)[:200] if isinstance(message, str) else code
    return f"http_{response.status_code}", f"the peer answered HTTP {response.status_code}"


def _segment(value: str, what: str) -> str:
    if what == "resource":
        if not _RESOURCE_RE.fullmatch(value):
            raise ValueError("resource must be a lowercase resource name")
        return value
    return urllib.parse.quote(value, safe="")


class FederationClient:
    """Typed calls to one peer's verbs with one connection's identity."""

    def __init__(
        self,
        material: ConnectionMaterial,
        context: ssl.SSLContext,
        *,
        timeouts: ClientTimeouts | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        connect_attempts: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.material = material
        self._max_bytes = max_response_bytes
        self._attempts = max(1, connect_attempts)
        if transport is None:
            # Our own asyncio/h11 transport (fedcore.peer_transport: ~10x less CPU per call
            # than httpcore/anyio), bound to this connection's endpoint.
            try:
                transport = PeerTransport(
                    material.endpoint_url,
                    context,
                    max_connections=MAX_CONNECTIONS_PER_PEER,
                    max_keepalive_connections=MAX_KEEPALIVE_PER_PEER,
                )
            except (httpx.UnsupportedProtocol, httpx.InvalidURL):
                raise ConnectionUnusable(
                    "the connection's endpoint is not an https URL with a valid host"
                ) from None
        # Requests go straight to the transport: httpx's client layer (base URL merge, cookies,
        # auth and redirect flows, event hooks, decoders) is nothing this client uses and cost
        # ~0.2 ms of CPU per call. What it gave is here: the timeouts (as httpx's request
        # extension), no redirects (a 3xx is a refusal), no proxy or netrc from the environment.
        self._transport = transport
        self._base_url = material.endpoint_url + VERBS_PREFIX
        timeouts = timeouts or ClientTimeouts()
        self._timeout = timeouts.httpx().as_dict()
        self._deadline = timeouts.call_deadline
        # identity: no compressed answer to inflate (a small gzip body can expand a lot before
        # the size cap sees it; an encoded answer is not JSON and is refused as such).
        self._headers = httpx.Headers(
            {"Accept": "application/json", "Accept-Encoding": "identity", "User-Agent": USER_AGENT}
        )
        self._json_headers = httpx.Headers({**self._headers, "Content-Type": "application/json"})

    @classmethod
    def create(
        cls, material: ConnectionMaterial, sealer: Sealer, **kwargs: Any
    ) -> FederationClient:
        return cls(material, build_ssl_context(material, sealer), **kwargs)

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> FederationClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    # -- the verbs ---------------------------------------------------------------------------

    async def capabilities(self) -> Capabilities:
        body = await self._call("GET", "/capabilities", None)
        try:
            return Capabilities(
                resources=[str(r) for r in body["resources"]],
                excluded_resources=[str(r) for r in body["excluded_resources"]],
                max_rows_per_query=int(body["max_rows_per_query"]),
                supported_verbs=[str(v) for v in body["supported_verbs"]],
                grant_id=str(body["grant_id"]),
                subject_user_id=str(body["subject_user_id"]),
                expires_at=None if body.get("expires_at") is None else str(body["expires_at"]),
            )
        except (KeyError, TypeError, ValueError):
            raise PeerProtocolError("the peer's capabilities do not parse") from None

    async def list(
        self,
        resource: str,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> Page:
        payload = _drop_none({"limit": limit, "cursor": cursor, "filter": filter})
        body = await self._call("POST", f"/list/{_segment(resource, 'resource')}", payload)
        return _page(body)

    async def search(
        self,
        resource: str,
        query: str,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> Page:
        payload = _drop_none({"query": query, "limit": limit, "cursor": cursor, "filter": filter})
        body = await self._call("POST", f"/search/{_segment(resource, 'resource')}", payload)
        return _page(body)

    async def get(self, resource: str, row_id: str) -> dict[str, Any]:
        path = f"/get/{_segment(resource, 'resource')}/{_segment(str(row_id), 'id')}"
        body = await self._call("POST", path, None)
        item = body.get("item")
        if not isinstance(item, dict):
            raise PeerProtocolError("the peer's answer has no item")
        return item

    async def renew(self, csr_pem: str) -> RenewedCertificate:
        """A new certificate for the same grant (``POST /renew``). Not idempotent (each call
        may mint a certificate), so never retried."""
        body = await self._call("POST", "/renew", {"csr_pem": csr_pem}, idempotent=False)
        try:
            return RenewedCertificate(
                cert_pem=str(body["cert_pem"]),
                cert_chain_pem=str(body["cert_chain_pem"]),
                serial=str(body["serial"]),
                not_after=str(body["not_after"]),
            )
        except KeyError:
            raise PeerProtocolError("the peer's renewal answer does not parse") from None

    # -- transport ---------------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, payload: Any, *, idempotent: bool = True
    ) -> dict[str, Any]:
        attempts = self._attempts if idempotent else 1
        try:
            try:
                # The first attempt directly: the retry machinery costs CPU on every call (a
                # fan-out makes many), and only a retryable failure needs it.
                return await self._send(method, path, payload)
            except Exception as first:
                if attempts < 2 or not _is_retryable(first):
                    raise
            # The same jittered wait tenacity would have put before the second attempt.
            await asyncio.sleep(secrets.SystemRandom().uniform(0, 0.1))
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_is_retryable),
                stop=stop_after_attempt(attempts - 1),
                wait=wait_random_exponential(multiplier=0.05, max=0.5),
                reraise=True,
            ):
                with attempt:
                    return await self._send(method, path, payload)
        except httpx.TimeoutException:
            raise PeerTimeout("the peer did not answer in time") from None
        except httpx.ConnectError as exc:
            if _caused_by_tls(exc):
                raise PeerUnreachable(
                    "TLS with the peer failed (its certificate does not match the pinned CA?)",
                    code="peer_tls_failed",
                ) from None
            raise PeerUnreachable("the peer cannot be reached") from None
        except httpx.HTTPError as exc:
            raise PeerUnreachable(
                f"the exchange with the peer failed ({type(exc).__name__})"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover - AsyncRetrying reraises

    async def _send(self, method: str, path: str, payload: Any) -> dict[str, Any]:
        content = orjson.dumps(payload) if method != "GET" and payload is not None else None
        request = httpx.Request(
            method,
            self._base_url + path,
            headers=self._json_headers if content is not None else self._headers,
            content=content,
            extensions={"timeout": self._timeout},
        )
        try:
            async with asyncio.timeout(self._deadline):
                response, raw = await self._exchange(request)
        except TimeoutError:
            raise PeerTimeout("the peer's answer took longer than the call allows") from None
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        if not response.is_success:
            code, message = _peer_code(response, body)
            raise PeerRefused(response.status_code, code, message)
        if not isinstance(body, dict):
            raise PeerProtocolError("the peer did not answer a JSON object")
        return body

    async def _exchange(self, request: httpx.Request) -> tuple[httpx.Response, bytearray]:
        """Send, and read the whole answer under the size cap (nothing is decoded: the
        request asked for ``identity``)."""
        response = await self._transport.handle_async_request(request)
        try:
            stream = response.stream
            if not isinstance(stream, httpx.AsyncByteStream):
                raise PeerProtocolError("the transport gave no asynchronous answer")
            raw = bytearray()
            async for chunk in stream:
                raw.extend(chunk)
                if len(raw) > self._max_bytes:
                    raise PeerProtocolError(
                        "the peer's answer is too large", code="peer_response_too_large"
                    )
        finally:
            await response.aclose()
        return response, raw


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _page(body: dict[str, Any]) -> Page:
    items, cursor, truncated = body.get("items"), body.get("next_cursor"), body.get("truncated")
    if (
        not isinstance(items, list)
        or not all(isinstance(item, dict) for item in items)
        or not (cursor is None or isinstance(cursor, str))
        or not isinstance(truncated, bool)
    ):
        raise PeerProtocolError("the peer's page does not parse")
    return Page(items=items, next_cursor=cursor, truncated=truncated)


# ------------------------------------------------------------------------------ the pool


class FederationClientPool:
    """One client per connection, rebuilt when the connection's material changes.

    A replaced client is closed after ``retire_after`` seconds, so calls already in flight on
    it finish; :meth:`retain` closes the clients of connections that are gone or inactive.
    """

    def __init__(
        self,
        sealer: Sealer,
        *,
        timeouts: ClientTimeouts | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        retire_after: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._sealer = sealer
        self._timeouts = timeouts or ClientTimeouts()
        self._max_bytes = max_response_bytes
        self._retire_after = retire_after
        self._transport = transport
        self._clients: dict[uuid.UUID, FederationClient] = {}
        self._retiring: dict[asyncio.Task[None], FederationClient] = {}

    def __len__(self) -> int:
        return len(self._clients)

    def client_for(self, material: ConnectionMaterial) -> FederationClient:
        """The cached client for this connection, or a new one if its material changed."""
        cached = self._clients.get(material.id)
        if cached is not None and cached.material.same_identity(material):
            return cached
        client = FederationClient.create(
            material,
            self._sealer,
            timeouts=self._timeouts,
            max_response_bytes=self._max_bytes,
            transport=self._transport,
        )
        self._clients[material.id] = client
        if cached is not None:
            self._retire(cached)
        return client

    def retain(self, connection_ids: Iterable[uuid.UUID]) -> None:
        """Drop the clients of every connection not in ``connection_ids``."""
        keep = set(connection_ids)
        for connection_id in [cid for cid in self._clients if cid not in keep]:
            self._retire(self._clients.pop(connection_id))

    def drop(self, connection_id: uuid.UUID) -> None:
        """Drop one connection's client (it is no longer active: its key must not stay in
        memory until the next ``retain``)."""
        client = self._clients.pop(connection_id, None)
        if client is not None:
            self._retire(client)

    def _retire(self, client: FederationClient) -> None:
        async def close_later() -> None:
            await asyncio.sleep(self._retire_after)
            await client.aclose()

        task = asyncio.get_running_loop().create_task(close_later())
        self._retiring[task] = client
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def aclose(self) -> None:
        retiring, self._retiring = dict(self._retiring), {}
        for task in retiring:
            task.cancel()
        clients, self._clients = [*self._clients.values(), *retiring.values()], {}
        for client in clients:
            await client.aclose()
