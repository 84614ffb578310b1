"""fedcore.peer_transport against a real TLS server on loopback (mTLS, certificates from
fedcore.pki): keep-alive reuse and when a connection must not be reused, every timeout, TLS and
protocol failure as httpx's own exception, the one-origin rule, slots released on every path.
The server is scripted per test (a real gateway cannot misbehave on demand); the transport
against real nginx is in tests/e2e/test_fanout.py and the bench."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import resource
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedcore import pki
from fedcore.federation_client import (
    ClientTimeouts,
    ConnectionMaterial,
    ConnectionUnusable,
    FederationClient,
    PeerProtocolError,
    PeerTimeout,
    build_ssl_context,
)
from fedcore.peer_transport import DEFAULT_PHASE_TIMEOUT, Origin, PeerTransport
from fedcore.sealing import PURPOSE_CONNECTION_KEY, Sealer
from tests.support.custom_certs import custom_client_cert, valid_values
from tests.support.net import host
from tests.support.secrets import random_secret

HOST = host(31)
TIMEOUT = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}
PAGE = {"items": [{"id": "1"}], "next_cursor": None, "truncated": False}
Handler = Callable[["Exchange"], Awaitable[None]]


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


@dataclass
class Exchange:
    """One request as the server saw it, and the stream to answer on."""

    head: bytes
    body: bytes
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer_subject: str


@dataclass
class Server:
    port: int
    handler: Handler
    accepted: int = 0
    requests: list[Exchange] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for_requests(self, count: int) -> None:
        while len(self.requests) < count:
            self.arrived.clear()  # no await between the check and here: nothing is missed
            await self.arrived.wait()


@dataclass(frozen=True)
class Pki:
    hierarchy: pki.CaHierarchy
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext
    material: ConnectionMaterial
    sealer: Sealer


def _server_context(hierarchy: pki.CaHierarchy, server_host: str, tmp: Path) -> ssl.SSLContext:
    """What the peer's nginx does: present a certificate for ``server_host`` from
    ``hierarchy`` and require a client certificate from it."""
    tmp.mkdir(parents=True, exist_ok=True)
    key, cert = pki.issue_server_certificate(
        hierarchy.intermediate_key, hierarchy.intermediate_cert, [server_host]
    )
    (tmp / "server.pem").write_text(pki.cert_pem(cert) + hierarchy.chain_pem)
    (tmp / "server.key").write_bytes(pki.private_key_pem(key))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=hierarchy.bundle_pem)
    context.load_cert_chain(str(tmp / "server.pem"), str(tmp / "server.key"))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _pki(tmp: Path) -> Pki:
    """A gateway hierarchy that signs the server certificate and the client identity the
    server requires (one hierarchy here: what matters is that a certificate is sent)."""
    hierarchy = pki.generate_ca_hierarchy("peer")
    server = _server_context(hierarchy, HOST, tmp)
    grant_value, subject_value = valid_values(uuid.uuid4(), uuid.uuid4())

    client_key = pki.new_ec_key()
    client_cert = custom_client_cert(  # the federation profile: clientAuth, grant + user OIDs
        hierarchy,
        client_key,
        peer_id=uuid.uuid4(),
        grant_value=grant_value,
        subject_value=subject_value,
    )
    sealer = Sealer(random_secret())
    material = ConnectionMaterial(
        id=uuid.uuid4(),
        name="peer",
        endpoint_url=f"https://{HOST}:1",  # the port is set per server
        cert_pem=pki.cert_pem(client_cert),
        cert_chain_pem=hierarchy.chain_pem,
        ca_bundle_pem=hierarchy.bundle_pem,
        sealed_private_key=sealer.seal(
            pki.private_key_pem(client_key), purpose=PURPOSE_CONNECTION_KEY
        ),
    )
    return Pki(hierarchy, server, build_ssl_context(material, sealer), material, sealer)


@pytest.fixture
def keys(tmp_path: Path) -> Pki:
    return _pki(tmp_path)


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return head, body


@asynccontextmanager
async def serving(
    context: ssl.SSLContext | None, handler: Handler, bind: str = HOST
) -> AsyncIterator[Server]:
    """A TLS server on loopback; ``handler`` answers each request (keep-alive: the next
    request on the same connection is read once the handler returns without closing)."""
    state = Server(0, handler)
    tasks: set[asyncio.Task[None]] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        state.accepted += 1
        cert = writer.get_extra_info("peercert") or {}
        subject = dict(item for rdn in cert.get("subject", ()) for item in rdn).get(
            "commonName", ""
        )
        try:
            while not writer.is_closing():
                request = await _read_request(reader)
                if request is None:
                    break
                exchange = Exchange(request[0], request[1], reader, writer, subject)
                state.requests.append(exchange)
                state.arrived.set()
                await state.handler(exchange)
                with suppress(ConnectionError, ssl.SSLError):
                    await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return  # torn down: end normally (asyncio's stream callback logs a cancelled task)
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(on_connection, bind, 0, ssl=context)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        for task in list(tasks):
            with suppress(BaseException):
                await task
        await server.wait_closed()


async def answer_page(exchange: Exchange) -> None:
    exchange.writer.write(_ok(json.dumps(PAGE).encode()))


async def silent(exchange: Exchange) -> None:
    """A peer that reads the request and never answers."""
    await asyncio.sleep(30)


async def fails_then_recovers(keys: Pki, handler: Handler, error: type[Exception]) -> None:
    """With one connection slot: a request the peer answers badly raises ``error``; then the
    slot is free again and a good answer arrives over a new connection (the bad one was not
    reused)."""
    async with serving(keys.server_context, handler) as server:
        peer = transport(keys, server, max_connections=1)
        try:
            with pytest.raises(error):
                await fetch(peer, server)
            server.handler = answer_page
            assert (await fetch(peer, server))[0] == 200
        finally:
            await peer.aclose()
    assert server.accepted == 2


async def fetch_twice(
    keys: Pki, handler: Handler, pause: float = 0.0, **kwargs: Any
) -> tuple[list[bytes], int]:
    """Two requests, ``pause`` seconds apart: the answers' bodies, and how many connections the
    server accepted for them (1: the connection was reused)."""
    async with serving(keys.server_context, handler) as server:
        peer = transport(keys, server, **kwargs)
        try:
            answers = []
            for index in range(2):
                if index:
                    await asyncio.sleep(pause)
                status, body = await fetch(peer, server)
                assert status == 200
                answers.append(body)
        finally:
            await peer.aclose()
    return answers, server.accepted


def transport(keys: Pki, server: Server, **kwargs: object) -> PeerTransport:
    return PeerTransport(f"https://{HOST}:{server.port}", keys.client_context, **kwargs)  # type: ignore[arg-type]


def request(server: Server, path: str = "/api/federation/v1/list/tasks") -> httpx.Request:
    return httpx.Request(
        "POST",
        f"https://{HOST}:{server.port}{path}",
        content=b'{"limit":50}',
        headers={"Content-Type": "application/json"},
        extensions={"timeout": TIMEOUT},
    )


async def body_of(response: httpx.Response) -> bytes:
    try:
        return b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()


async def fetch(peer: PeerTransport, server: Server) -> tuple[int, bytes]:
    response = await peer.handle_async_request(request(server))
    return response.status_code, await body_of(response)


# ------------------------------------------------------------------------------ keep-alive


async def test_sequential_requests_share_one_connection_and_present_the_identity(
    keys: Pki,
) -> None:
    async with serving(keys.server_context, answer_page) as server:
        peer = transport(keys, server)
        try:
            for _ in range(5):
                assert await fetch(peer, server) == (200, json.dumps(PAGE).encode())
        finally:
            await peer.aclose()
    assert server.accepted == 1
    assert len(server.requests) == 5
    first = server.requests[0]
    assert first.head.startswith(b"POST /api/federation/v1/list/tasks HTTP/1.1\r\n")
    assert f"host: {HOST}:{server.port}".encode() in first.head.lower()
    assert first.body == b'{"limit":50}'
    assert first.peer_subject == "odd-peer"  # the client certificate was presented


async def test_keep_alive_works_for_descriptors_above_fd_setsize(keys: Pki) -> None:
    """A busy service has more than 1024 descriptors open; the idle-connection check must not
    take every such connection for dirty (select() cannot watch them; poll() can)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        pytest.skip(f"descriptor limit {soft}: cannot open one above 1024")
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        async with serving(keys.server_context, answer_page) as server:
            peer = transport(keys, server)
            try:
                for _ in range(3):
                    await fetch(peer, server)
                [connection] = peer._idle
                assert connection.writer.get_extra_info("socket").fileno() >= 1024
            finally:
                await peer.aclose()
        assert server.accepted == 1
    finally:
        for fd in filler:
            os.close(fd)


async def test_concurrent_requests_each_get_a_connection_and_idle_ones_are_capped(
    keys: Pki,
) -> None:
    gate = asyncio.Event()

    async def slow(exchange: Exchange) -> None:
        await gate.wait()
        await answer_page(exchange)

    async with serving(keys.server_context, slow) as server:
        peer = transport(keys, server, max_keepalive_connections=2)
        try:
            calls = [asyncio.create_task(fetch(peer, server)) for _ in range(4)]
            await server.wait_for_requests(4)
            gate.set()
            assert [status for status, _ in await asyncio.gather(*calls)] == [200] * 4
            assert server.accepted == 4
            for _ in range(3):  # two kept, the others closed: at most one new connection
                await fetch(peer, server)
            assert server.accepted == 4
        finally:
            await peer.aclose()


async def test_dead_idle_connections_do_not_crowd_out_a_healthy_one(keys: Pki) -> None:
    gate = asyncio.Event()

    async def handler(exchange: Exchange) -> None:
        path = exchange.head.split(b" ")[1]
        if path.endswith(b"/slow"):
            await gate.wait()
        exchange.writer.write(_ok(b"{}"))
        if path.endswith(b"/closing"):  # a clean keep-alive answer, later the peer hangs up
            await exchange.writer.drain()
            await asyncio.sleep(0.05)
            exchange.writer.close()

    async with serving(keys.server_context, handler) as server:
        peer = transport(keys, server, max_keepalive_connections=2)
        try:
            slow = asyncio.create_task(peer.handle_async_request(request(server, "/v1/slow")))
            await server.wait_for_requests(1)
            for response in await asyncio.gather(
                *(peer.handle_async_request(request(server, "/v1/closing")) for _ in range(2))
            ):
                await body_of(response)  # two idle connections, both closed by the peer
            assert len(peer._idle) == 2
            await asyncio.sleep(0.2)
            gate.set()
            await body_of(await slow)  # the healthy one comes back: the dead ones make room
            await fetch(peer, server)
        finally:
            await peer.aclose()
    assert server.accepted == 3  # the last call reused the healthy connection


async def test_a_chunked_answer_is_read_and_the_connection_reused(keys: Pki) -> None:
    async def chunked(exchange: Exchange) -> None:
        exchange.writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
        )

    assert await fetch_twice(keys, chunked) == ([b"abcdefg", b"abcdefg"], 1)


async def test_connection_close_is_honoured(keys: Pki) -> None:
    async def closing(exchange: Exchange) -> None:
        exchange.writer.write(_ok(b"{}", b"Connection: close\r\n"))
        await exchange.writer.drain()
        exchange.writer.close()

    assert await fetch_twice(keys, closing) == ([b"{}", b"{}"], 2)


async def test_a_connection_the_peer_closed_while_idle_is_not_reused(keys: Pki) -> None:
    async def answer_then_close(exchange: Exchange) -> None:
        exchange.writer.write(_ok(b"{}"))  # no "Connection: close": a keep-alive that ends
        await exchange.writer.drain()
        exchange.writer.close()

    # The peer's close arrives while the connection is idle.
    assert await fetch_twice(keys, answer_then_close, pause=0.1) == ([b"{}", b"{}"], 2)


async def test_idle_connections_expire(keys: Pki) -> None:
    _, accepted = await fetch_twice(keys, answer_page, pause=0.1, keepalive_expiry=0.05)
    assert accepted == 2


async def test_an_answer_not_read_to_its_end_closes_its_connection(keys: Pki) -> None:
    big = b"x" * 300_000

    async def large(exchange: Exchange) -> None:
        exchange.writer.write(_ok(big))

    async with serving(keys.server_context, large) as server:
        peer = transport(keys, server, max_connections=1)
        try:
            response = await peer.handle_async_request(request(server))
            async for _ in response.aiter_raw():
                break  # the caller stops early (e.g. the size cap)
            await response.aclose()
            # The slot is free again, and the half-read connection was not reused.
            assert (await fetch(peer, server))[1] == big
        finally:
            await peer.aclose()
    assert server.accepted == 2


@pytest.mark.parametrize("when", ["with_the_answer", "while_idle"])
async def test_bytes_beyond_the_answer_never_become_the_next_answer(keys: Pki, when: str) -> None:
    """A peer that sends more than it framed (a miscounted Content-Length, a 204 with a body,
    an unsolicited answer): the extra bytes must not be read as the next request's answer."""
    smuggled = _ok(b'"SMUGGLED"')

    async def handler(exchange: Exchange) -> None:
        path = exchange.head.split(b" ")[1]
        if path.endswith(b"/first"):
            if when == "with_the_answer":
                exchange.writer.write(_ok(b'"first"') + smuggled)
            else:
                exchange.writer.write(_ok(b'"first"'))
                await exchange.writer.drain()
                await asyncio.sleep(0.05)
                exchange.writer.write(smuggled)
        else:
            exchange.writer.write(_ok(b'"' + path.rsplit(b"/", 1)[-1] + b'"'))

    async with serving(keys.server_context, handler) as server:
        peer = transport(keys, server)
        try:
            answers = []
            for name in ("first", "second", "third"):
                response = await peer.handle_async_request(request(server, f"/v1/{name}"))
                answers.append(await body_of(response))
                await asyncio.sleep(0.15)  # the late bytes arrive while the connection idles
        finally:
            await peer.aclose()
    assert answers == [b'"first"', b'"second"', b'"third"']
    assert server.accepted == 2  # the connection that carried extra bytes was dropped


def test_bytes_still_in_the_kernel_when_the_caller_was_busy_are_seen_too(keys: Pki) -> None:
    """The peer (its own thread and loop) sends an extra answer after the first while the
    caller's loop is busy (no await between calls): the bytes are in the kernel, not yet in the
    reader, when the connection is picked again — the socket check must catch them."""
    smuggled = _ok(b'"SMUGGLED"')
    sent = threading.Event()

    async def handler(exchange: Exchange) -> None:
        path = exchange.head.split(b" ")[1]
        if path.endswith(b"/first"):
            exchange.writer.write(_ok(b'"first"'))
            await exchange.writer.drain()
            await asyncio.sleep(0.002)
            exchange.writer.write(smuggled)
            await exchange.writer.drain()
            sent.set()
        else:
            exchange.writer.write(_ok(b'"' + path.rsplit(b"/", 1)[-1] + b'"'))

    ready, stop, box = threading.Event(), threading.Event(), {}

    def run_server() -> None:
        async def main() -> None:
            async with serving(keys.server_context, handler) as server:
                box["server"] = server
                ready.set()
                await asyncio.to_thread(stop.wait)

        asyncio.run(main())

    thread = threading.Thread(target=run_server, daemon=True)
    thread.start()
    assert ready.wait(10)
    server: Server = box["server"]

    async def client() -> list[bytes]:
        peer = transport(keys, server)
        answers = []
        try:
            for name in ("first", "second", "third"):
                response = await peer.handle_async_request(request(server, f"/v1/{name}"))
                answers.append(await body_of(response))
                if name == "first":
                    # Busy (blocking, the loop does not poll) until the extra bytes are sent,
                    # and a moment for them to cross loopback into our socket's buffer.
                    assert sent.wait(10)
                    time.sleep(0.05)  # noqa: ASYNC251 - blocking on purpose: a busy caller
        finally:
            await peer.aclose()
        return answers

    try:
        answers = asyncio.run(client())
    finally:
        stop.set()
        thread.join(10)
    assert answers == [b'"first"', b'"second"', b'"third"']


# ------------------------------------------------------------------------------ failures


async def test_a_peer_that_never_answers_is_a_read_timeout_and_frees_the_slot(keys: Pki) -> None:
    async with serving(keys.server_context, silent) as server:
        peer = transport(keys, server, max_connections=1)
        try:
            slow = request(server)
            slow.extensions["timeout"] = {**TIMEOUT, "read": 0.2}
            with pytest.raises(httpx.ReadTimeout):
                await peer.handle_async_request(slow)
            server.handler = answer_page
            assert (await fetch(peer, server))[0] == 200
        finally:
            await peer.aclose()
    assert server.accepted == 2  # the timed-out connection was not reused


async def test_a_peer_that_accepts_but_never_does_tls_is_a_connect_timeout(keys: Pki) -> None:
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # closed at the end of the test, not left to the collector

    blackhole = await asyncio.start_server(hold, HOST, 0)  # plain TCP: no handshake ever
    port = blackhole.sockets[0].getsockname()[1]
    peer = PeerTransport(f"https://{HOST}:{port}", keys.client_context)
    try:
        slow = httpx.Request(
            "GET", f"https://{HOST}:{port}/x", extensions={"timeout": {**TIMEOUT, "connect": 0.2}}
        )
        with pytest.raises(httpx.ConnectTimeout):
            await peer.handle_async_request(slow)
    finally:
        await peer.aclose()
        for writer in held:
            writer.transport.abort()
        blackhole.close()
        await blackhole.wait_closed()


async def test_a_refused_port_is_a_connect_error_not_caused_by_tls(keys: Pki) -> None:
    async with serving(keys.server_context, answer_page) as server:
        port = server.port
    peer = PeerTransport(f"https://{HOST}:{port}", keys.client_context)
    try:
        with pytest.raises(httpx.ConnectError) as info:
            await peer.handle_async_request(
                httpx.Request("GET", f"https://{HOST}:{port}/x", extensions={"timeout": TIMEOUT})
            )
    finally:
        await peer.aclose()
    assert not isinstance(info.value.__cause__, ssl.SSLError)


@pytest.mark.parametrize("case", ["other_ca", "other_host"])
async def test_a_server_certificate_that_does_not_verify_is_a_tls_connect_error(
    keys: Pki, tmp_path: Path, case: str
) -> None:
    if case == "other_ca":  # the right address, from a hierarchy the pin does not hold
        wrong = _server_context(pki.generate_ca_hierarchy("other"), HOST, tmp_path / case)
    else:  # the pinned hierarchy, but issued for another address
        wrong = _server_context(keys.hierarchy, host(32), tmp_path / case)
    async with serving(wrong, answer_page) as server:
        peer = transport(keys, server)
        try:
            with pytest.raises(httpx.ConnectError) as info:
                await peer.handle_async_request(request(server))
        finally:
            await peer.aclose()
    assert isinstance(info.value.__cause__, ssl.SSLError)
    assert server.requests == []  # nothing was sent over an unverified channel


@pytest.mark.parametrize(
    "url",
    [
        "http://{host}:{port}/x",  # another scheme
        "https://{host}:{other}/x",  # another port
        "https://localhost:{port}/x",  # another host
    ],
)
async def test_only_the_pinned_origin_is_spoken_to(keys: Pki, url: str) -> None:
    async with serving(keys.server_context, answer_page) as server:
        peer = transport(keys, server)
        target = url.format(host=HOST, port=server.port, other=server.port + 1)
        try:
            with pytest.raises(httpx.UnsupportedProtocol):
                await peer.handle_async_request(
                    httpx.Request("GET", target, extensions={"timeout": TIMEOUT})
                )
        finally:
            await peer.aclose()
    assert server.accepted == 0


def test_a_plain_http_origin_is_refused_at_construction(keys: Pki) -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        PeerTransport(f"http://{HOST}:8443", keys.client_context)


@pytest.mark.parametrize(
    "answer",
    [
        b"this is not http\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",  # header block too large
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    ],
    ids=["garbage", "huge_header", "conflicting_length"],
)
async def test_an_answer_that_is_not_valid_http_is_a_protocol_error(
    keys: Pki, answer: bytes
) -> None:
    async def bad(exchange: Exchange) -> None:
        exchange.writer.write(answer)

    await fails_then_recovers(keys, bad, httpx.RemoteProtocolError)


async def test_a_peer_that_hangs_up_mid_answer_is_a_protocol_error(keys: Pki) -> None:
    async def cut(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part")
        await exchange.writer.drain()
        exchange.writer.close()

    await fails_then_recovers(keys, cut, httpx.RemoteProtocolError)


async def test_a_cancelled_request_frees_its_slot_and_drops_its_connection(keys: Pki) -> None:
    async with serving(keys.server_context, silent) as server:
        peer = transport(keys, server, max_connections=1)
        try:
            task = asyncio.create_task(fetch(peer, server))
            await server.wait_for_requests(1)
            task.cancel()  # what a fan-out's per-source timeout does
            with pytest.raises(asyncio.CancelledError):
                await task
            server.handler = answer_page
            assert (await fetch(peer, server))[0] == 200
        finally:
            await peer.aclose()
    assert server.accepted == 2


async def test_waiting_longer_than_the_pool_timeout_for_a_slot_is_a_pool_timeout(
    keys: Pki,
) -> None:
    async with serving(keys.server_context, silent) as server:
        peer = transport(keys, server, max_connections=1)
        try:
            busy = asyncio.create_task(fetch(peer, server))
            await server.wait_for_requests(1)
            waiting = request(server)
            waiting.extensions["timeout"] = {**TIMEOUT, "pool": 0.1}
            with pytest.raises(httpx.PoolTimeout):
                await peer.handle_async_request(waiting)
            busy.cancel()
            with suppress(asyncio.CancelledError):
                await busy
        finally:
            await peer.aclose()
    assert server.accepted == 1


async def test_a_closed_transport_sends_nothing(keys: Pki) -> None:
    async with serving(keys.server_context, answer_page) as server:
        peer = transport(keys, server)
        await fetch(peer, server)
        await peer.aclose()
        with pytest.raises(RuntimeError):
            await fetch(peer, server)
    assert len(server.requests) == 1


# ------------------------------------------------------------------------------ via the client


def _client_for(keys: Pki, server: Server, **kwargs: Any) -> FederationClient:
    material = ConnectionMaterial(
        **{**keys.material.__dict__, "endpoint_url": f"https://{HOST}:{server.port}"}
    )
    return FederationClient.create(material, keys.sealer, **kwargs)


async def test_the_federation_client_reads_a_page_through_the_real_transport(keys: Pki) -> None:
    async with (
        serving(keys.server_context, answer_page) as server,
        _client_for(keys, server) as client,
    ):
        page = await client.list("tasks", limit=50)
        again = await client.list("tasks", limit=50)
    assert page.items == again.items == PAGE["items"]
    assert server.accepted == 1
    head = server.requests[0].head.lower()
    assert b"accept-encoding: identity" in head
    assert b"content-type: application/json" in head
    assert json.loads(server.requests[0].body) == {"limit": 50}


async def test_an_oversized_answer_is_cut_off_by_the_client(keys: Pki) -> None:
    huge = json.dumps({**PAGE, "items": [{"x": "y" * 50_000}]}).encode()

    async def large(exchange: Exchange) -> None:
        exchange.writer.write(_ok(huge))

    async with (
        serving(keys.server_context, large) as server,
        _client_for(keys, server, max_response_bytes=10_000) as client,
    ):
        with pytest.raises(PeerProtocolError) as info:
            await client.list("tasks")
    assert info.value.code == "peer_response_too_large"


async def test_a_compressed_answer_is_refused_not_inflated(keys: Pki) -> None:
    async def gzipped(exchange: Exchange) -> None:
        exchange.writer.write(
            _ok(gzip.compress(json.dumps(PAGE).encode()), b"Content-Encoding: gzip\r\n")
        )

    async with serving(keys.server_context, gzipped) as server, _client_for(keys, server) as client:
        with pytest.raises(PeerProtocolError) as info:
            await client.list("tasks")
    assert info.value.code == "peer_invalid_response"


# ------------------------------------------------------------------------------ edges


def test_an_internationalised_host_is_dialled_by_its_ascii_name() -> None:
    origin = Origin.of(httpx.URL("https://fa\u00df.example:8443/x"))
    assert origin == Origin("xn--fa-hia.example", 8443)  # IDNA 2008, as in the Host header


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://[::1]:8443", Origin("::1", 8443)),
        ("https://127.0.0.1", Origin("127.0.0.1", 443)),
        ("https://gw_a.peer-1.example:9", Origin("gw_a.peer-1.example", 9)),
        ("https://localhost:8443", Origin("localhost", 8443)),
    ],
)
def test_ordinary_hosts_are_accepted(url: str, origin: Origin) -> None:
    assert Origin.of(httpx.URL(url)) == origin


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://" + "a" * 64 + ".example:8443",  # a label over 63 characters
        "https://\u2603.example",  # not IDNA 2008
        "http://peer.example",
        "https://peer.example.",  # trailing dot: SNI and the name check would disagree
        "https://a*b.example",
        "https://-a.example",
        "https://127.1",  # legacy numeric IPv4 forms: an address dialled, a name checked
        "https://2130706433",
        "https://0x7f.1",
        "https://1.2.3.4.5",
        "https://[fe80::1%25eth0]",  # an IPv6 zone
    ],
)
def test_an_endpoint_that_cannot_be_dialled_makes_the_connection_unusable(
    keys: Pki, endpoint: str
) -> None:
    with pytest.raises((httpx.InvalidURL, httpx.UnsupportedProtocol)):
        PeerTransport(endpoint, keys.client_context)
    material = ConnectionMaterial(**{**keys.material.__dict__, "endpoint_url": endpoint})
    with pytest.raises(ConnectionUnusable):  # a per-source error in a fan-out, never a 500
        FederationClient.create(material, keys.sealer)


async def test_a_phase_without_a_timeout_gets_a_finite_one(keys: Pki) -> None:
    async with serving(keys.server_context, silent) as server:
        peer = transport(keys, server)
        try:
            bare = httpx.Request("GET", f"https://{HOST}:{server.port}/x")  # no timeout at all
            started = asyncio.get_running_loop().time()
            with pytest.raises(httpx.ReadTimeout):
                await peer.handle_async_request(bare)
            assert asyncio.get_running_loop().time() - started < DEFAULT_PHASE_TIMEOUT + 1
        finally:
            await peer.aclose()


async def test_a_peer_trickling_its_answer_meets_the_call_deadline(keys: Pki) -> None:
    async def trickle(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(100):  # each byte well inside the read timeout
            await asyncio.sleep(0.05)
            exchange.writer.write(b" ")
            await exchange.writer.drain()

    async with serving(keys.server_context, trickle) as server:
        timeouts = ClientTimeouts(connect=1, read=0.5, write=1, pool=1, total=0.6)
        async with _client_for(keys, server, timeouts=timeouts) as client:
            started = asyncio.get_running_loop().time()
            with pytest.raises(PeerTimeout) as info:
                await client.list("tasks")
            elapsed = asyncio.get_running_loop().time() - started
    assert info.value.code == "peer_timeout"
    assert elapsed < 2.0  # the trickle alone would take 5 s


def test_the_deadline_defaults_to_the_phases_back_to_back() -> None:
    assert ClientTimeouts(connect=1, read=2, write=3, pool=4).call_deadline == 10
    assert ClientTimeouts(total=0.5).call_deadline == 0.5


def test_sslkeylogfile_cannot_make_the_client_write_its_tls_secrets(
    keys: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "keys.log"))
    context = build_ssl_context(keys.material, keys.sealer)
    assert context.keylog_filename is None
