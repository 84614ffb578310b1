"""uvicorn's httptools protocol with one change: a response's head and body reach the socket as
one ``send``.

uvicorn writes a response's status line and headers, then its body, as two ``transport.write``
calls; with ``TCP_NODELAY`` (uvloop's default) each is a ``send`` of its own, and each wakes the
reader (nginx) once more. Measured on the verbs behind nginx (py-spy, `list` answers of ~20 KB):
the header ``send`` alone was 7.5 % of a verbs worker's samples.

Here a write is held, and the next write sends both at once — for a whole response (head, then
body, in the same step of the request's task) that is immediately, with no added wait. A write
that no other follows (a streamed response's last chunk, ``100 Continue``) goes out at the
event loop's next turn. Holding every write until the loop's next turn instead was measured and
rejected: a response then waited behind whatever other requests' work was already queued.

Nothing else changes: the same bytes in the same order; a close or ``write_eof`` sends what is
held first; flow control (``pause_writing``/``resume_writing``) still comes from the real
transport, whose buffer size includes what is held. Used by every service (fedcore.runner) and,
for a fair comparison, by the bench's bare endpoint.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport(asyncio.Transport):
    """Wraps a transport: a write is held until the next one (sent together) or the loop's
    next turn, whichever comes first."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held = b""

    # -- the change --------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._held:
            data, self._held = self._held + data, b""
            if not self._transport.is_closing():
                self._transport.write(data)
            return
        self._held = bytes(data)
        self._loop.call_soon(self._flush)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        data, self._held = self._held, b""
        if data and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = b""
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held)

    # -- the rest as is ----------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._flush()  # the next protocol's writes must not overtake this one's
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``httptools`` protocol writing through a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))
