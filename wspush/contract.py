"""What the relay's core and a server engine agree on, and nothing of either.

The hub and the endpoints speak to a connection through a `Sink`; a server that can
write pre-encoded bytes straight to a connection offers a `DirectWriter` in the ASGI
scope, under the `wspush.direct_write` extension. Servers that cannot (any ASGI server,
uvicorn's stock protocols) get sinks over ASGI `send` instead, so every feature built on
these two types works everywhere; `wspush.engine` is only the faster way to satisfy
them. This module imports nothing from a server, on purpose.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

DIRECT_WRITE = "wspush.direct_write"
# In the scope of a request whose head the server held to the app's `max_request_head`
# as it read it: the app need not measure the head again.
HEAD_LIMITED = "wspush.request_head_limited"
# Seconds a kicked client gets to take its close before the connection is cut.
KICK_GRACE = 1.0

# WebSocket close codes (RFC 6455 section 7.4.1 and the IANA registry).
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
# A client disconnected for not reading: policy violation.
CLOSE_TOO_SLOW = CLOSE_POLICY_VIOLATION


@dataclass(frozen=True, slots=True)
class CloseReason:
    """Why the relay closes a connection, in the words of each transport: the WebSocket
    close code and reason, and the SSE bytes that end the stream (None: the relay's
    `retry:` hint, with its jitter). Every sink ends a connection with the reason its
    subscription was closed with."""

    code: int
    reason: str = ""
    sse: bytes | None = None


GOING_AWAY = CloseReason(CLOSE_GOING_AWAY)


class DirectWriter(Protocol):
    """What a server engine puts at `scope["extensions"]["wspush.direct_write"]["writer"]`:
    the connection's transport, for bytes already framed for it."""

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


class WebSocketWriter(DirectWriter, Protocol):
    """A `DirectWriter` of a WebSocket, which can also start the closing handshake."""

    def close(self, code: int, reason: str = "") -> None: ...


class Sink(Protocol):
    """One connection as the hub sees it. The hub's drain (`Subscription.drain`) is the
    only loop that sends a connection its backlog, and it does all the counting.

    `writer` is the server's direct writer when there is one: while it is ready and
    nothing waits before it, the hub writes each message's bytes to it straight (the hot
    path). A sink over ASGI `send` has none, so it is never ready: everything for it
    waits in the connection's queue for the drain.
    """

    @property
    def writer(self) -> DirectWriter | None: ...

    async def send(self, items: list[bytes]) -> int:
        """The backlog path: encoded messages, in order, once the client takes them;
        returns the bytes that took on the wire (as near as the server lets it know)."""

    async def end(self, reason: CloseReason) -> None:
        """The relay's close: a WebSocket close frame, or the SSE stream's last event."""

    def kick(self, code: int) -> None:
        """Cut a client that does not read (see `DirectWriter.kick`)."""


class TaskFreeWebSocket(Protocol):
    """What an app's `open_websocket_now(scope, writer)` returns: the endpoint of an
    accepted WebSocket that needs no task (None: call the app with it as usual). The
    server puts the connection's ASGI receive events here (a client message, the
    disconnect) instead of in a queue for `receive()`."""

    def put_nowait(self, message: Any) -> None: ...

    def opened(self) -> None:
        """The 101 is written: messages may go out from now on."""


class TaskFreeStream(Protocol):
    """What an app's `open_sse_now(scope, writer)` returns: the response of an SSE
    stream that needs no task (None: call the app with it as usual). The server sends
    its head, calls `opened` with the cycle's `send`, and `disconnected` at the end."""

    status_code: int
    raw_headers: list[tuple[bytes, bytes]]

    def opened(self, send: Any) -> None: ...

    def disconnected(self) -> None: ...


def direct_writer(scope: Mapping[str, Any]) -> DirectWriter | None:
    """The server's direct writer for this connection, if it offers one."""
    extension = (scope.get("extensions") or {}).get(DIRECT_WRITE)
    return None if extension is None else extension["writer"]
