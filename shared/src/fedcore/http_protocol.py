"""uvicorn's httptools protocol with one change: a response's head and body reach the socket as
one ``send``.

uvicorn writes a response's status line and headers, then its body, as two ``transport.write``
calls; with ``TCP_NODELAY`` (uvloop's default) each is a ``send`` of its own, and each wakes the
reader (nginx) once more. Measured on the verbs behind nginx (py-spy, `list` answers of ~20 KB):
the header ``send`` alone was 7.5 % of a verbs worker's samples.

Here a write is held, and the next write sends both at once (one ``writev``) — for a whole
response (head, then body, in the same step of the request's task) that is immediately, with no
added wait. The end of a response (uvicorn's ``on_response_complete``: a HEAD, a 204, an empty
body, a chunked terminator) and the peer's EOF send what is held at once; a write of 64 KiB or
more passes straight through. Only a write in the middle of a response that no other follows
in the same step (a streamed chunk before an await, ``100 Continue``) waits, until the event
loop's next turn. Holding every write until the loop's next turn instead was measured and
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

# A write this large gains nothing from company: it goes straight through (held bytes first), so
# flow control sees it at once.
PASS_THROUGH_BYTES = 64 * 1024


class CoalescingTransport(asyncio.Transport):
    """Wraps a transport: a write is held until the next one (sent together), the response's
    end, or the loop's next turn, whichever comes first."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held = b""
        self._scheduled: asyncio.Handle | None = None

    # -- the change --------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._held or len(data) >= PASS_THROUGH_BYTES:
            held = self._take_held()
            if not self._transport.is_closing():
                # One send for both: uvloop writes a buffer list with one writev, no copy.
                self._transport.writelines((held, data) if held else (data,))
            return
        self._held = bytes(data)
        self._scheduled = self._loop.call_soon(self.flush)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Send what is held now (the response is complete, the peer sent its EOF, the loop
        turned)."""
        data = self._take_held()
        if data and not self._transport.is_closing():
            self._transport.write(data)

    def _take_held(self) -> bytes:
        data, self._held = self._held, b""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        return data

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._take_held()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held)

    # -- the rest as is ----------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()  # the next protocol's writes must not overtake this one's
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
        self._coalescing = CoalescingTransport(transport, self.loop)
        super().connection_made(self._coalescing)

    def on_response_complete(self) -> None:
        # The response's last bytes leave now, not at the loop's next turn: HEAD, 204/304, an
        # empty body (its head is the lone write), a chunked terminator, a body sent after an
        # await. Under load the next turn was measured 11-47 ms away (review of this change).
        self._coalescing.flush()
        super().on_response_complete()

    def eof_received(self) -> None:
        # The real transport closes itself when this returns (uvicorn keeps no half-open
        # connection): what is held must reach it first, or a half-closing client loses it.
        self._coalescing.flush()
        super().eof_received()
