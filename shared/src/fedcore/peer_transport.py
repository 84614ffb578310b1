"""The federation client's HTTP transport: HTTP/1.1 over asyncio's own TLS, framed by h11.

Why not httpx's default transport: measured on the bench machine (docs/performance.md), httpcore
over anyio — TLS through a Python-level memory BIO, a ``sniffio`` import attempt per call — costs
~1.6 ms of CPU per 20 KB verbs answer; this transport ~0.15 ms (+ ~0.2 ms for httpx's client
layer above it). A fan-out makes one call per connection on one event loop, so that CPU is the
fan-out's latency. httpx stays the client API: requests, responses, timeouts and exception
types are httpx's, so :mod:`fedcore.federation_client` (and its tests' ``MockTransport``) are
unchanged.

What it does, and no more:

* **one origin**, fixed at construction (the connection's endpoint), ``https`` only: a request
  for any other scheme, host or port is refused before a socket is opened — this identity only
  ever talks to the endpoint it was pinned for;
* TLS by the given :class:`ssl.SSLContext` (the connection's pinned CA, client certificate,
  hostname check), with the endpoint's host as ``server_hostname``;
* **h11** parses the answer (a strict HTTP/1.1 parser: framing by ``Content-Length`` or
  chunked, header block capped at ``max_header_bytes``, anything malformed is an error);
* **keep-alive**: a connection goes back to the idle list only after a complete exchange that
  h11 says may continue; idle connections expire after ``keepalive_expiry`` seconds and are
  dropped when the peer has closed them. A request that fails, times out or is cancelled —
  or an answer not read to its end — aborts its connection: a half-used connection is never
  reused;
* httpx's four timeouts: ``pool`` (waiting for one of ``max_connections``), ``connect`` (TCP and
  TLS handshake), ``write``, ``read`` (each wait for bytes), raised as httpx's own exceptions
  (a TLS failure as :class:`httpx.ConnectError` whose cause is the :class:`ssl.SSLError`).

No retries here: :class:`~fedcore.federation_client.FederationClient` decides what may be
retried.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import select
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Final, SupportsIndex

import h11
import httpx

READ_CHUNK: Final = 64 * 1024
DEFAULT_MAX_HEADER_BYTES: Final = 16 * 1024
# Below nginx's keepalive_timeout (75 s): an idle connection is retired by us before the
# server closes it under a request.
DEFAULT_KEEPALIVE_EXPIRY: Final = 30.0
DEFAULT_PHASE_TIMEOUT: Final = 5.0


@dataclass(frozen=True)
class Origin:
    host: str
    port: int

    @classmethod
    def of(cls, url: httpx.URL) -> Origin:
        if url.scheme != "https" or not url.raw_host:
            raise httpx.UnsupportedProtocol(f"only https origins are supported ({url.scheme})")
        # The ASCII (IDNA 2008) form: what the Host header says is what is dialled and what the
        # certificate is checked against (the Unicode form would be re-encoded by socket/ssl
        # under IDNA 2003 rules — a different name for some hosts).
        host = url.raw_host.decode("ascii")
        if not _valid_host(host):
            raise httpx.InvalidURL(f"not a host name or address: {host[:80]!r}")
        return cls(host, url.port or 443)


_DNS_LABEL: Final = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)", re.ASCII)


def _valid_host(host: str) -> bool:
    """An IP address (no IPv6 zone), or a DNS name that dials what the certificate is checked
    against: LDH labels of 1-63 characters, at most 253 in all, no trailing dot, and not a
    legacy numeric IPv4 form (``127.1``, ``2130706433``, ``0x7f.1``: the resolver would dial an
    address while TLS checks the certificate for a name)."""
    if "%" in host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if len(host) > 253 or host.endswith("."):
        return False
    labels = host.lower().split(".")
    if not all(_DNS_LABEL.fullmatch(label) for label in labels):
        return False
    last = labels[-1]
    return not (last.isdigit() or last.startswith("0x"))


class _PeerReader(asyncio.StreamReader):
    """asyncio's stream reader, counting the bytes it holds and noticing bytes that arrive
    while its connection sits idle in the pool: a connection holding bytes nobody asked for is
    never reused, or they would be read as the next request's answer (a desync).

    Only :meth:`read_chunk` reads from it (the count would miss any other read method)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit=limit)
        self.buffered = 0
        self.idle = False
        self.unsolicited = False

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        chunk = data if isinstance(data, bytes | bytearray | memoryview) else bytes(data)
        if self.idle and len(chunk):
            self.unsolicited = True
        self.buffered += len(chunk)
        super().feed_data(chunk)

    async def read_chunk(self) -> bytes:
        data = await super().read(READ_CHUNK)
        self.buffered -= len(data)
        return data


def _socket_readable(writer: asyncio.StreamWriter) -> bool:
    """Whether the kernel holds bytes (or an EOF) for this socket that the event loop has not
    read yet — on an idle keep-alive connection, something nobody asked for."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return True  # cannot tell: treat as dirty
    try:
        fileno = sock.fileno()
        if fileno < 0:
            return True
        poller = select.poll()  # not select(): that refuses descriptors >= FD_SETSIZE (1024)
        poller.register(fileno, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))  # any event (incl. POLLHUP/POLLERR): not reusable
    except (OSError, ValueError):
        return True


@dataclass(eq=False)  # identity: kept in a set while in use
class _Connection:
    reader: _PeerReader
    writer: asyncio.StreamWriter
    protocol: h11.Connection
    idle_since: float = field(default_factory=time.monotonic)

    def usable(self, now: float, expiry: float) -> bool:
        """Still open, not closed by the peer and sent nothing while idle — neither bytes the
        loop already handed to the reader nor bytes still in the kernel (the loop may not have
        polled since they arrived: the caller was busy) —, and not idle too long. Bytes sent
        after this check are HTTP/1.1 keep-alive's inherent race (httpcore's check is the same);
        the exchange that meets them fails as a protocol error and is never reused."""
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and not self.reader.unsolicited
            and now - self.idle_since < expiry
            and self.protocol.our_state is h11.IDLE
            and self.protocol.their_state is h11.IDLE
            and not _socket_readable(self.writer)
        )

    def exchange_ended_cleanly(self) -> bool:
        """Both sides done, and not one byte beyond the answer, neither in h11's buffer nor in
        the reader's (a peer that miscounts its Content-Length, a 204 with a body, ...)."""
        return (
            self.protocol.our_state is h11.DONE
            and self.protocol.their_state is h11.DONE
            and self.protocol.trailing_data == (b"", False)
            and self.reader.buffered == 0
            and not self.reader.at_eof()
        )

    def abort(self) -> None:
        # No TLS close_notify: the exchange on it is unfinished or unwanted, and waiting for
        # the peer's side of a shutdown could take as long as the peer likes.
        self.writer.transport.abort()


def _remaining(timeouts: dict[str, float | None], name: str) -> float | None:
    """The phase's timeout; a phase httpx did not mention gets a finite default (None, said
    explicitly, is no limit)."""
    if name not in timeouts:
        return DEFAULT_PHASE_TIMEOUT
    value = timeouts[name]
    return None if value is None else float(value)


class PeerTransport(httpx.AsyncBaseTransport):
    """An httpx transport for one https origin over asyncio TLS streams (see the module doc)."""

    def __init__(
        self,
        origin: httpx.URL | str,
        ssl_context: ssl.SSLContext,
        *,
        max_connections: int = 20,
        max_keepalive_connections: int = 10,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        self.origin = Origin.of(httpx.URL(origin))
        self._context = ssl_context
        self._max_keepalive = max(0, max_keepalive_connections)
        self._expiry = keepalive_expiry
        self._max_header_bytes = max_header_bytes
        self._slots = asyncio.Semaphore(max(1, max_connections))
        self._idle: list[_Connection] = []
        self._in_use: set[_Connection] = set()
        self._closed = False

    # -- httpx interface ---------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        if Origin.of(request.url) != self.origin:
            raise httpx.UnsupportedProtocol(
                "this transport only talks to the origin it was made for", request=request
            )
        timeouts: dict[str, float | None] = dict(request.extensions.get("timeout") or {})
        try:
            async with asyncio.timeout(_remaining(timeouts, "pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no connection slot became free", request=request) from None
        connection: _Connection | None = None
        try:
            connection = self._take_idle() or await self._connect(request, timeouts)
            self._in_use.add(connection)
            await self._send(connection, request, timeouts)
            head = await self._receive_head(connection, request, timeouts)
        except BaseException:
            if connection is not None:
                self._discard(connection)
            self._slots.release()
            raise
        return httpx.Response(
            status_code=head.status_code,
            headers=list(head.headers),
            stream=_ResponseBody(self, connection, request, _remaining(timeouts, "read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
        )

    async def aclose(self) -> None:
        self._closed = True
        connections, self._idle = [*self._idle, *self._in_use], []
        self._in_use.clear()
        for connection in connections:
            connection.abort()

    # -- connections -------------------------------------------------------------------------

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the likeliest still open
            if connection.usable(now, self._expiry):
                connection.reader.idle = False
                return connection
            connection.abort()
        return None

    async def _connect(
        self, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> _Connection:
        try:
            loop = asyncio.get_running_loop()
            reader = _PeerReader(READ_CHUNK)
            async with asyncio.timeout(_remaining(timeouts, "connect")):
                # asyncio.open_connection, with our reader
                transport, stream_protocol = await loop.create_connection(
                    lambda: asyncio.StreamReaderProtocol(reader),
                    self.origin.host,
                    self.origin.port,
                    ssl=self._context,
                    server_hostname=self.origin.host,
                )
            writer = asyncio.StreamWriter(transport, stream_protocol, reader, loop)
        except TimeoutError:
            raise httpx.ConnectTimeout("connect timed out", request=request) from None
        except (ssl.SSLError, ssl.CertificateError) as exc:
            # Kept as the cause: the caller tells a TLS failure from a refused connection by it.
            raise httpx.ConnectError("the TLS handshake failed", request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError("the peer cannot be reached", request=request) from exc
        except ValueError as exc:  # e.g. UnicodeError: a host name the resolver cannot encode
            raise httpx.ConnectError("the peer's host name is not valid", request=request) from exc
        protocol = h11.Connection(h11.CLIENT, max_incomplete_event_size=self._max_header_bytes)
        return _Connection(reader, writer, protocol)

    def _release(self, connection: _Connection, *, reusable: bool) -> None:
        """Called once per request by its response body: back to the idle list or closed."""
        self._in_use.discard(connection)
        try:
            if reusable and not self._closed and connection.exchange_ended_cleanly():
                connection.protocol.start_next_cycle()
                connection.idle_since = time.monotonic()
                connection.reader.idle = True
                self._prune_idle()  # first: a dead idle connection must not take a kept slot
                if len(self._idle) < self._max_keepalive:
                    self._idle.append(connection)
                else:
                    connection.abort()
            else:
                connection.abort()
        finally:
            self._slots.release()

    def _prune_idle(self) -> None:
        """Close idle connections the peer has closed or written to (the list is short)."""
        now, kept = time.monotonic(), []
        for connection in self._idle:
            if connection.usable(now, self._expiry):
                kept.append(connection)
            else:
                connection.abort()
        self._idle = kept

    def _discard(self, connection: _Connection) -> None:
        self._in_use.discard(connection)
        connection.abort()

    # -- one exchange ------------------------------------------------------------------------

    async def _send(
        self, connection: _Connection, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> None:
        body = await request.aread()
        protocol = connection.protocol
        try:
            data = protocol.send(
                h11.Request(
                    method=request.method,
                    target=request.url.raw_path,
                    headers=request.headers.raw,
                )
            )
            if body:
                data = (data or b"") + (protocol.send(h11.Data(data=body)) or b"")
            data = (data or b"") + (protocol.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from None
        try:
            async with asyncio.timeout(_remaining(timeouts, "write")):
                connection.writer.write(data)
                await connection.writer.drain()
        except TimeoutError:
            raise httpx.WriteTimeout("sending to the peer timed out", request=request) from None
        except OSError as exc:
            raise httpx.WriteError("sending to the peer failed", request=request) from exc

    async def _receive_head(
        self, connection: _Connection, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> h11.Response:
        read_timeout = _remaining(timeouts, "read")
        while True:
            event = await _next_event(connection, request, read_timeout)
            if isinstance(event, h11.InformationalResponse | h11.Response):
                # h11 caps only a head still incomplete; one that arrived whole is capped here.
                size = sum(len(name) + len(value) + 4 for name, value in event.headers)
                if size > self._max_header_bytes:
                    raise httpx.RemoteProtocolError(
                        "the peer's answer has too large a header block", request=request
                    )
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.InformationalResponse):
                continue  # 1xx: the final answer follows
            raise httpx.RemoteProtocolError(
                "the peer closed the connection without an answer", request=request
            )


async def _next_event(
    connection: _Connection, request: httpx.Request, read_timeout: float | None
) -> h11.Event | None:
    """The next h11 event, reading from the socket (each wait bounded by the read timeout);
    None where h11 pauses (it only does once this exchange is over)."""
    protocol = connection.protocol
    while True:
        try:
            event = protocol.next_event()
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(
                f"the peer's answer is not valid HTTP/1.1 ({exc})", request=request
            ) from None
        if isinstance(event, h11.Event):
            return event
        if event is h11.PAUSED:
            return None
        try:
            async with asyncio.timeout(read_timeout):
                data = await connection.reader.read_chunk()
        except TimeoutError:
            raise httpx.ReadTimeout("the peer did not answer in time", request=request) from None
        except OSError as exc:
            raise httpx.ReadError("reading from the peer failed", request=request) from exc
        try:
            protocol.receive_data(data)  # b"" is the peer's end of stream
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(
                f"the peer's answer is not valid HTTP/1.1 ({exc})", request=request
            ) from None


class _ResponseBody(httpx.AsyncByteStream):
    """The answer's body, read from the connection as the caller iterates; ``aclose`` hands the
    connection back (complete exchange) or aborts it (anything else)."""

    def __init__(
        self,
        transport: PeerTransport,
        connection: _Connection,
        request: httpx.Request,
        read_timeout: float | None,
    ) -> None:
        self._transport = transport
        self._connection = connection
        self._request = request
        self._read_timeout = read_timeout
        self._complete = False
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._released:
            raise httpx.StreamClosed()
        try:
            while not self._complete:
                event = await _next_event(self._connection, self._request, self._read_timeout)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._complete = True
                else:  # ConnectionClosed mid-body, PAUSED: the exchange did not finish
                    raise httpx.RemoteProtocolError(
                        "the peer closed the connection mid-answer", request=self._request
                    )
        except BaseException:
            self._finish()
            raise

    async def aclose(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self._released:
            self._released = True
            self._transport._release(self._connection, reusable=self._complete)
