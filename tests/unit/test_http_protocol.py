"""fedcore.http_protocol: a response leaves in one write, with the same bytes as before.

A real uvicorn server on a loopback port, a real socket client. What reaches the kernel is
recorded by wrapping the server's transport (the one thing a socket cannot tell: how many
``send`` calls made the bytes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fedcore.http_protocol import CoalescingHttpToolsProtocol, CoalescingTransport
from fedcore.responses import JsonResponse
from tests.support.net import host

BIG = 3 * 1024 * 1024  # far above the transport's high-water mark: flow control must work


class _Recorder:
    """The server's real transport, with every ``write`` it is given recorded."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self.writes = writes

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

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

    @app.get("/big")
    async def big() -> JsonResponse:
        return JsonResponse({"data": "x" * BIG})

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for part in (b"one,", b"two,", b"three"):
                yield part
                await asyncio.sleep(0.01)

        return StreamingResponse(parts(), media_type="text/plain")

    return app


@asynccontextmanager
async def _server(protocol: type[asyncio.Protocol]) -> AsyncIterator[tuple[str, int]]:
    config = uvicorn.Config(
        _app(), host=host(77), port=0, http=protocol, log_config=None, lifespan="off"
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
        await task


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


def _post(body: bytes, close: bool = False) -> bytes:
    head = f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode() + body


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
    requests = _post(b"abc") + _get("/stream") + _post(b"", close=True)  # pipelined
    answers: dict[type[asyncio.Protocol], bytes] = {}
    for protocol in (CoalescingHttpToolsProtocol, HttpToolsProtocol):
        async with _server(protocol) as address:
            answers[protocol] = _without_date(await _exchange(address, requests))
    assert answers[CoalescingHttpToolsProtocol] == answers[HttpToolsProtocol]
    coalesced = answers[CoalescingHttpToolsProtocol]
    assert coalesced.count(b"HTTP/1.1 200 OK") == 3
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


class _FakeTransport(asyncio.Transport):
    """Only for the wrapper's own rules below (held bytes, close, abort); the tests above use
    the real transport."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

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


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (lambda t: t.close(), [("write", b"head"), ("close", b"")]),
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
    await _next_turn()  # the scheduled flush finds nothing left
    assert real.calls == expected


async def test_nothing_is_written_to_a_transport_that_is_closing() -> None:
    real = _FakeTransport()
    wrapped = CoalescingTransport(real, asyncio.get_running_loop())
    wrapped.write(b"late")
    real.closing = True  # the peer went away before the loop's next turn
    await _next_turn()
    assert real.calls == []
