"""uvicorn protocols that let wspush write pre-encoded bytes straight to a connection.

ASGI sends one message per call, and each call costs a chain of coroutines in the app
and the server. For a relay, every client of a token gets the same bytes: one SSE
chunk or one WebSocket frame, encoded once per message. These subclasses of uvicorn's
own protocols add an ASGI scope extension, `wspush.direct_write`, whose `writer` puts
those bytes on the transport with one call. Everything else (handshakes, closes,
keep-alive pings, flow control) stays uvicorn's. Without the extension (another server,
or uvicorn's stock protocols) wspush sends through plain ASGI messages instead.

`wspush` uses these protocols; under a bare `uvicorn` command, pass
`--http wspush.protocols:HttpToolsDirectProtocol
--ws wspush.protocols:WebSocketsSansIODirectProtocol` to get the same speed.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

DIRECT_WRITE = "wspush.direct_write"
KICK_GRACE = 1.0
CLOSE_GOING_AWAY = 1001


class DirectWriter(Protocol):
    """What an endpoint finds at `scope["extensions"]["wspush.direct_write"]["writer"]`."""

    chunked: bool  # HTTP only: the body is chunk-framed, so bytes must be too

    def ready(self) -> bool:
        """Open, started, and not paused by flow control: a write goes out now."""

    def is_open(self) -> bool:
        """The peer is still there and nothing has closed the stream."""

    def write(self, data: bytes) -> None:
        """Write complete frames or chunks; only call after `ready()` or `is_open()`."""

    async def wait_writable(self) -> None:
        """Return once the transport's write buffer is below its high-water mark."""

    def kick(self, code: int) -> None:
        """Disconnect a client that does not read: say why if the protocol can (a
        WebSocket close frame), and cut the connection if it is still there after
        `KICK_GRACE` seconds."""


class HTTPDirectWriter:
    """Writes response body bytes of one HTTP request/response cycle."""

    __slots__ = ("cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self.cycle = cycle

    @property
    def chunked(self) -> bool:
        return bool(self.cycle.chunked_encoding)

    def is_open(self) -> bool:
        cycle = self.cycle
        return cycle.response_started and not cycle.response_complete and not cycle.disconnected

    def ready(self) -> bool:
        return self.is_open() and not self.cycle.flow.write_paused

    def write(self, data: bytes) -> None:
        self.cycle.transport.write(data)

    async def wait_writable(self) -> None:
        await self.cycle.flow.drain()

    def kick(self, code: int) -> None:
        transport = self.cycle.transport
        if not transport.is_closing():
            transport.close()
            asyncio.get_running_loop().call_later(KICK_GRACE, transport.abort)


class HttpToolsDirectProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the direct-write extension on each request."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope and not cycle.response_started:
            extensions = dict(self.scope.get("extensions") or {})
            extensions[DIRECT_WRITE] = {"writer": HTTPDirectWriter(cycle)}
            self.scope["extensions"] = extensions


class WebSocketDirectWriter:
    """Writes whole WebSocket frames once the handshake is done and until a close."""

    __slots__ = ("protocol",)
    chunked = False

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self.protocol = protocol

    def is_open(self) -> bool:
        # The endpoint only uses the writer after accept(), so the handshake is done.
        protocol = self.protocol
        return not protocol.close_sent and not protocol.transport.is_closing()

    def ready(self) -> bool:
        return self.is_open() and self.protocol.writable.is_set()

    def write(self, data: bytes) -> None:
        self.protocol.transport.write(data)

    async def wait_writable(self) -> None:
        await self.protocol.writable.wait()

    def kick(self, code: int) -> None:
        protocol = self.protocol
        if not self.is_open():
            return
        protocol.conn.send_close(code, "too slow")
        protocol.transport.write(b"".join(protocol.conn.data_to_send()))
        protocol.close_sent = True
        protocol.loop.call_later(KICK_GRACE, protocol.transport.abort)


class WebSocketsSansIODirectProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, plus the direct-write extension."""

    async def run_asgi(self) -> None:
        extensions = dict(self.scope.get("extensions") or {})
        extensions[DIRECT_WRITE] = {"writer": WebSocketDirectWriter(self)}
        self.scope["extensions"] = extensions
        await super().run_asgi()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # The denial response is complete. uvicorn does not count that as a finished
            # handshake and logs an ERROR for every refused WebSocket; this one is done.
            self.handshake_complete = True

    def shutdown(self) -> None:
        """Server shutdown: close with 1001 (going away), as the Go program does, where
        uvicorn says 1012 (service restart). `wspush` drains its clients before this
        runs; this covers servers that don't (worker processes, a bare `uvicorn`)."""
        if self.handshake_complete and not self.close_sent:
            self.stop_keepalive()
            self.queue.put_nowait({"type": "websocket.disconnect", "code": CLOSE_GOING_AWAY})
            self.conn.send_close(CLOSE_GOING_AWAY)
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()
            return
        super().shutdown()
