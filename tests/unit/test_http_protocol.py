"""fedcore.http_protocol: a response leaves in one write, with the same bytes as before, and
nothing waits for the event loop's next turn at a response's end or a client's EOF.

A real uvicorn server on a loopback port, a real socket client. What reaches the kernel is
recorded by wrapping the server's transport (the one thing a socket cannot tell: how many
``send`` calls made the bytes)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from fedcore.http_protocol import (
    PASS_THROUGH_BYTES,
    CoalescingHttpToolsProtocol,
    CoalescingTransport,
)
from fedcore.responses import JsonResponse
from tests.support.net import host

BIG = 3 * 1024 * 1024  # far above the transport's high-water mark: flow control must work
HALF_CLOSE_AFTER = 0.02


class _Recorder:
    """The server's real transport, with every send it is asked for recorded (``writelines``
    is one send: uvloop writes the list with one ``writev``)."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self.writes = writes

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        parts = [bytes(data) for data in list_of_data]
        self.writes.append(b"".join(parts))
        self._transport.writelines(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _recording(base: type[HttpToolsProtocol], writes: list[bytes]) -> type[HttpToolsProtocol]:
    class Recording(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(_Recorder(transport, writes))

    return Recording


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> JsonResponse:
        return JsonResponse({"size": len(await request.body())})

    @app.api_route("/big", methods=["GET", "HEAD"])
    async def big() -> JsonResponse:
        return JsonResponse({"data": "x" * BIG})

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for part in (b"one,", b"two,", b"three"):
                yield part
                await asyncio.sleep(0.01)

        return StreamingResponse(parts(), media_type="text/plain")

    @app.get("/big-stream")
    async def big_stream() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for letter in b"ABC":
                yield bytes([letter]) * 5000
                await asyncio.sleep(0.005)

        return StreamingResponse(parts(), media_type="text/plain")

    @app.get("/body-after-await")
    async def body_after_await() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            await asyncio.sleep(HALF_CLOSE_AFTER * 3)  # the head is written (and held) first
            yield b"late body"

        return StreamingResponse(parts(), media_type="text/plain", headers={"x-a": "1"})

    @app.api_route("/empty", methods=["GET", "HEAD"])
    async def empty() -> Response:
        return Response(status_code=204)

    @app.get("/addresses")
    async def addresses(request: Request) -> JsonResponse:
        return JsonResponse(
            {"client": request.client is not None, "server": request.scope["server"] is not None}
        )

    return app


def _empty_after_queued_work(events: list[tuple[str, float]]) -> Any:
    """A raw ASGI app: work is queued in this very step of the loop before the answer (a 204,
    so its head is the only write) — a head held until the loop's next turn would wait
    behind it. Both sends happen in this step (uvicorn's send does not suspend)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        asyncio.get_running_loop().call_soon(
            lambda: events.append(("queued work", time.perf_counter()))
        )
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


@asynccontextmanager
async def _server(
    protocol: type[asyncio.Protocol], app: Any = None
) -> AsyncIterator[tuple[str, int]]:
    config = uvicorn.Config(
        app or _app(), host=host(77), port=0, http=protocol, log_config=None, lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield host(77), port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _exchange(address: tuple[str, int], raw: bytes) -> bytes:
    """Send ``raw`` (one or more requests), read until the server closes."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def _get(path: str, close: bool = False) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{connection}\r\n".encode()


def _head(path: str) -> bytes:
    return f"HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def _post(body: bytes, close: bool = False) -> bytes:
    head = f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode() + body


async def _half_closed_exchange(address: tuple[str, int], raw: bytes) -> bytes:
    """Send ``raw``, then FIN (a half-close, as HTTP/1.1 allows), read until the server
    closes. The FIN follows after HALF_CLOSE_AFTER: the server (on this same event loop) has
    begun its answer by then, so what it sends does not depend on which read saw the FIN."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(raw)
    await writer.drain()
    await asyncio.sleep(HALF_CLOSE_AFTER)
    writer.get_extra_info("socket").shutdown(socket.SHUT_WR)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def _without_date(raw: bytes) -> bytes:
    return b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"date:"))


@pytest.mark.parametrize("protocol", [CoalescingHttpToolsProtocol, HttpToolsProtocol])
async def test_a_response_is_one_write_with_the_protocol_and_two_without(
    protocol: type[HttpToolsProtocol],
) -> None:
    writes: list[bytes] = []
    async with _server(_recording(protocol, writes)) as address:
        answer = await _exchange(address, _post(b'{"a":1}', close=True))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b'\r\n\r\n{"size":7}')
    assert b"".join(writes) == answer
    expected = 1 if protocol is CoalescingHttpToolsProtocol else 2
    assert len(writes) == expected, [len(w) for w in writes]


async def test_the_bytes_are_those_uvicorn_writes_without_it() -> None:
    requests = (  # pipelined
        _post(b"abc") + _get("/stream") + _get("/empty") + _head("/empty") + _post(b"", close=True)
    )
    answers: dict[type[asyncio.Protocol], bytes] = {}
    for protocol in (CoalescingHttpToolsProtocol, HttpToolsProtocol):
        async with _server(protocol) as address:
            answers[protocol] = _without_date(await _exchange(address, requests))
    assert answers[CoalescingHttpToolsProtocol] == answers[HttpToolsProtocol]
    coalesced = answers[CoalescingHttpToolsProtocol]
    assert coalesced.count(b"HTTP/1.1 200 OK") == 3
    assert coalesced.count(b"HTTP/1.1 204 No Content") == 2  # GET and HEAD
    assert b'{"size":3}' in coalesced
    assert b'{"size":0}' in coalesced
    assert b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n" in coalesced  # chunked, whole


async def test_a_large_answer_arrives_whole_through_flow_control() -> None:
    async with _server(CoalescingHttpToolsProtocol) as address:
        reader, writer = await asyncio.open_connection(*address)
        writer.write(_get("/big", close=True))
        await writer.drain()
        await asyncio.sleep(0.2)  # the server meets a full socket buffer and pauses
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert len(body) == len(b'{"data":""}') + BIG


async def test_the_end_of_a_response_is_sent_at_once_not_at_the_loops_next_turn() -> None:
    events: list[tuple[str, float]] = []
    writes: list[bytes] = []

    class Timed(_recording(CoalescingHttpToolsProtocol, writes)):  # type: ignore[misc]
        def on_response_complete(self) -> None:
            super().on_response_complete()
            events.append(("sent" if writes else "not sent", time.perf_counter()))

    async with _server(Timed, _empty_after_queued_work(events)) as address:
        answer = await _exchange(address, _get("/"))  # keep-alive: no close() to flush
    assert answer.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert [name for name, _ in events] == ["sent", "queued work"], events


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (_get("/empty"), b"HTTP/1.1 204 No Content\r\n"),
        (_head("/big"), b"HTTP/1.1 200 OK\r\n"),
        (_post(b"xyz"), b'{"size":3}'),
        # The head alone (its body comes after an await) left at the loop's next turn, before
        # the FIN; the body, after the FIN, is cut off with or without the wrapper.
        (_get("/body-after-await"), b"HTTP/1.1 200 OK\r\n"),
    ],
)
async def test_a_half_closing_client_gets_what_uvicorn_alone_sends(
    request_bytes: bytes, expected: bytes
) -> None:
    answers = {}
    for protocol in (CoalescingHttpToolsProtocol, HttpToolsProtocol):
        async with _server(protocol) as address:
            answers[protocol] = _without_date(await _half_closed_exchange(address, request_bytes))
    assert answers[CoalescingHttpToolsProtocol] == answers[HttpToolsProtocol]
    assert expected in answers[CoalescingHttpToolsProtocol]


async def test_large_request_bodies_streams_and_addresses_pass_through() -> None:
    async with _server(CoalescingHttpToolsProtocol) as address:
        # Above the server's read high-water mark: reading pauses and resumes.
        posted = await _exchange(address, _post(b"x" * 200_000, close=True))
        streamed = await _exchange(address, _get("/big-stream", close=True))
        seen = await _exchange(address, _get("/addresses", close=True))
    assert posted.endswith(b'{"size":200000}')
    for letter in b"ABC":
        assert bytes([letter]) * 5000 in streamed
    assert seen.endswith(b'{"client":true,"server":true}')


class _FakeTransport(asyncio.Transport):
    """Only for the wrapper's own rules below (held bytes, close, abort); the tests above use
    the real transport."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, list_of_data: Any) -> None:
        self.calls.append(("write", b"".join(bytes(data) for data in list_of_data)))

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.calls.append(("set_protocol", b""))

    def write_eof(self) -> None:
        self.calls.append(("write_eof", b""))

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", b""))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 5

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket, no peer: what uvicorn reads at connection_made


async def _next_turn() -> None:
    await asyncio.sleep(0)


async def test_a_second_write_sends_both_at_once_and_a_lone_one_waits_one_turn() -> None:
    real = _FakeTransport()
    wrapped = CoalescingTransport(real, asyncio.get_running_loop())
    wrapped.write(b"head")
    assert real.calls == []  # held
    assert wrapped.get_write_buffer_size() == 5 + 4
    wrapped.write(b"body")
    assert real.calls == [("write", b"headbody")]  # at once: no wait for the loop
    wrapped.write(b"last chunk")
    await _next_turn()
    assert real.calls == [("write", b"headbody"), ("write", b"last chunk")]


async def test_a_large_write_passes_straight_through_after_what_is_held() -> None:
    real = _FakeTransport()
    wrapped = CoalescingTransport(real, asyncio.get_running_loop())
    big = b"b" * PASS_THROUGH_BYTES
    wrapped.write(big)
    assert real.calls == [("write", big)]  # nothing held: flow control sees it at once
    wrapped.write(b"head")
    wrapped.write(big)
    assert real.calls == [("write", big), ("write", b"head" + big)]
    assert wrapped.get_write_buffer_size() == 5


async def test_writelines_keeps_the_order() -> None:
    real = _FakeTransport()
    wrapped = CoalescingTransport(real, asyncio.get_running_loop())
    wrapped.writelines([b"a", b"b", b"c"])
    await _next_turn()
    assert b"".join(data for _, data in real.calls) == b"abc"


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (lambda t: t.close(), [("write", b"head"), ("close", b"")]),
        (lambda t: t.write_eof(), [("write", b"head"), ("write_eof", b"")]),
        (lambda t: t.set_protocol(asyncio.Protocol()), [("write", b"head"), ("set_protocol", b"")]),
        (lambda t: t.flush(), [("write", b"head")]),
        (lambda t: t.abort(), [("abort", b"")]),
    ],
)
async def test_close_sends_what_is_held_first_and_abort_drops_it(
    action: Callable[[CoalescingTransport], None], expected: list[tuple[str, bytes]]
) -> None:
    real = _FakeTransport()
    wrapped = CoalescingTransport(real, asyncio.get_running_loop())
    wrapped.write(b"head")
    action(wrapped)
    real.closing = False  # the scheduled flush must find nothing, whatever the transport says
    await _next_turn()
    assert real.calls == expected


async def test_the_protocol_sends_what_is_held_when_the_client_sends_eof() -> None:
    """The real transport closes itself once ``eof_received`` returns: held bytes must reach
    it first (uvicorn alone would have sent them already)."""
    config = uvicorn.Config(_app(), http=CoalescingHttpToolsProtocol, log_config=None)
    config.load()
    protocol = CoalescingHttpToolsProtocol(config, ServerState(), app_state={})
    real = _FakeTransport()
    protocol.connection_made(real)
    protocol.transport.write(b"held head")
    assert real.calls == []
    protocol.eof_received()
    assert real.calls == [("write", b"held head")]
    protocol.connection_lost(None)


async def test_nothing_is_written_to_a_transport_that_is_closing() -> None:
    real = _FakeTransport()
    wrapped = CoalescingTransport(real, asyncio.get_running_loop())
    wrapped.write(b"late")
    real.closing = True  # the peer went away before the loop's next turn
    await _next_turn()
    assert real.calls == []
