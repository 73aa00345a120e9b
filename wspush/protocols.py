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
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol
from urllib.parse import unquote

import httptools
from uvicorn.config import Config
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import ClientDisconnected, get_client_addr, get_path_with_query_string
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from wspush.handshake import plain_handshake_key, switching_protocols
from wspush.lightweight import LightEvent, LightQueue
from wspush.settings import DEFAULT_MAX_REQUEST_HEAD

DIRECT_WRITE = "wspush.direct_write"
# In the scope of a request whose head this server held to the app's `max_request_head`
# as it read it: the app need not measure the head again.
HEAD_LIMITED = "wspush.request_head_limited"
LIMITED: dict[object, object] = {}  # the extension's value: nothing to say but that
KICK_GRACE = 1.0
CLOSE_GOING_AWAY = 1001
# `head_room` of a connection whose head was refused: what it sends is read and dropped
# until it closes, or `KICK_GRACE` after the answer.
DISCARDING = -1
# The loggers uvicorn's protocols look up on every connection (a lock and a dict lookup
# each time); loggers are process-wide singletons, so one lookup is the same logger.
ERROR_LOGGER = logging.getLogger("uvicorn.error")
ACCESS_LOGGER = logging.getLogger("uvicorn.access")


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


class TaskFreeWebSocket(Protocol):
    """What an app's `open_websocket_now(scope, writer)` returns: the endpoint of an
    accepted WebSocket that needs no task (None: call the app with it as usual). The
    server puts the connection's ASGI receive events here (a client message, the
    disconnect) instead of in a queue for `receive()`."""

    def put_nowait(self, message: Any) -> None: ...

    def opened(self) -> None:
        """The 101 is written: messages may go out from now on."""


def task_free_opener(app: Any, name: str, scope: Any) -> tuple[Callable[..., Any] | None, Any]:
    """The app's `name` method (`open_websocket_now`, `open_sse_now`) if it has one, and
    the scope to call it with: as uvicorn's proxy-headers middleware, which wraps the
    app, would pass it on."""
    proxy = app if isinstance(app, ProxyHeadersMiddleware) else None
    opener = getattr(app if proxy is None else proxy.app, name, None)
    if opener is None or proxy is None:
        return opener, scope
    return opener, with_proxy_headers(proxy, scope)


def with_proxy_headers(middleware: ProxyHeadersMiddleware, scope: dict[str, Any]) -> dict[str, Any]:
    """A copy of `scope` as uvicorn's proxy-headers middleware passes it on: the client
    and scheme a trusted proxy forwarded (tests/test_connections.py compares the two)."""
    scope = dict(scope)
    client = scope.get("client")
    if not client or client[0] not in middleware.trusted_hosts:
        return scope
    proto: bytes | None = None
    forwarded_for: list[bytes] = []
    for name, value in scope["headers"]:
        if name == b"x-forwarded-proto":
            proto = value
        elif name == b"x-forwarded-for":
            forwarded_for.append(value)
    if proto is not None:
        scheme = proto.decode("latin1").strip()
        if scheme in {"http", "https", "ws", "wss"}:
            is_websocket = scope["type"] == "websocket"
            scope["scheme"] = scheme.replace("http", "ws") if is_websocket else scheme
    if forwarded_for:
        host, port = middleware.trusted_hosts.get_trusted_client_address(
            b", ".join(forwarded_for).decode("latin1")
        )
        if host:
            scope["client"] = (host, port)
    return scope


class TaskFreeStream(Protocol):
    """What an app's `open_sse_now(scope, writer)` returns: the response of an SSE
    stream that needs no task (None: call the app with it as usual). The server sends
    its head, calls `opened` with the cycle's `send`, and `disconnected` at the end."""

    status_code: int
    raw_headers: list[tuple[bytes, bytes]]

    def opened(self, send: Any) -> None: ...

    def disconnected(self) -> None: ...


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


class LazyPipeline:
    """The part of `deque` uvicorn uses for pipelined requests, allocated on first use."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: list[Any] | None = None

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return 0 if self._items is None else len(self._items)

    def appendleft(self, item: Any) -> None:
        if self._items is None:
            self._items = []
        self._items.insert(0, item)

    def pop(self) -> Any:
        if not self._items:
            raise IndexError("pop from an empty pipeline")
        item = self._items.pop()
        if not self._items:
            self._items = None
        return item


class LightFlowControl(FlowControl):
    """uvicorn's flow control, with a lightweight writable event (set: not paused)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._is_writable_event = LightEvent(True)  # type: ignore[assignment]


def transport_addresses(
    transport: asyncio.BaseTransport,
) -> tuple[tuple[str, int | None] | None, tuple[str, int] | None]:
    """The (server, client) addresses uvicorn puts in a scope, as uvicorn derives them.

    uvicorn asks the transport for its socket object and that for the addresses; under
    uvloop that builds a `socket.socket` per connection. The transport answers
    `sockname` and `peername` itself.
    """
    local = transport.get_extra_info("sockname")
    if isinstance(local, (list, tuple)):
        server: tuple[str, int | None] | None = (str(local[0]), int(local[1]))
    elif isinstance(local, str):
        server = (local, None)
    else:
        server = None
    peer = transport.get_extra_info("peername")
    client = (str(peer[0]), int(peer[1])) if isinstance(peer, (list, tuple)) else None
    return server, client


def request_head_limit(server_state: ServerState, app: Any) -> int:
    """The most bytes a request head may take on this server: the app's
    `max_request_head` (wspush's: `--max-request-head`), else wspush's default; looked
    up once and kept with the state the server's connections share."""
    limit: int | None = getattr(server_state, "wspush_max_request_head", None)
    if limit is None:
        target = app.app if isinstance(app, ProxyHeadersMiddleware) else app
        limit = int(getattr(target, "max_request_head", DEFAULT_MAX_REQUEST_HEAD))
        server_state.wspush_max_request_head = limit  # type: ignore[attr-defined]
    return limit


class HttpToolsDirectProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the direct-write extension on each request,
    and a limit on the size of a request head.

    It is also cheaper to open and to keep. Its waiting primitives are the lightweight
    ones: an SSE stream keeps its connection for hours, and uvicorn's deques and events
    would cost about 2 KB of it. Its constructor and `connection_made` are uvicorn's
    without the per-connection logger look-ups and socket objects, and it looks at a
    request's upgrade headers once instead of three times.

    httptools keeps a request head until it is complete, however long it grows, and
    so would uvicorn. This protocol holds at most the server's `request_head_limit`
    of it: a longer head gets 431 (from the app, with its CORS header) before the rest
    is read, SSE and WebSocket upgrades alike.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # uvicorn's constructor, attribute for attribute (tests/test_connections.py
        # compares the two), except where noted.
        if not config.loaded:
            config.load()
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.logger = ERROR_LOGGER
        self.access_logger = ACCESS_LOGGER
        self.access_log = ACCESS_LOGGER.hasHandlers()
        self.parser = httptools.HttpRequestParser(self)
        # Answer the first of pipelined requests, as uvicorn does.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.ws_protocol_class = config.ws_protocol_class
        self.root_path = config.root_path
        self.asgi_version = config.asgi_version
        self.limit_concurrency = config.limit_concurrency
        self.app_state = app_state
        self.timeout_keep_alive_task = None
        self.timeout_keep_alive = config.timeout_keep_alive
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.transport = None  # type: ignore[assignment]
        self.flow = None  # type: ignore[assignment]
        self.server = None
        self.client = None
        self.scheme = None
        self.pipeline = LazyPipeline()  # type: ignore[assignment]  # a deque: 760 bytes
        self.scope = None  # type: ignore[assignment]
        self.headers = None  # type: ignore[assignment]
        self.expect_100_continue = False
        self.cycle = None  # type: ignore[assignment]
        self.upgrade_of: list[tuple[bytes, bytes]] | None = None  # the headers `upgrading` is of
        self.upgrading = False
        self.stream: TaskFreeStream | None = None  # an SSE stream opened without a task
        # Bytes the request head being read may still take; None once it is complete.
        self.head_room: int | None = request_head_limit(server_state, self.app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.connections.add(self)
        self.transport = transport
        self.flow = LightFlowControl(transport)
        self.server, self.client = transport_addresses(transport)
        self.scheme = "https" if transport.get_extra_info("sslcontext") else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = "{}:{} - ".format(*self.client) if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the request head limit: a head is fed to the parser only as
        far as the limit allows, and refused if it has not ended there."""
        room = self.head_room
        if room is None and self.cycle is not None and not self.cycle.more_body:
            # The request before is complete: these bytes begin the next one's head. (If
            # they came with the end of that request, they were not counted: the limit
            # may let one read more in.)
            room = request_head_limit(self.server_state, self.app)
        if room is not None:
            if room == DISCARDING:
                return
            if len(data) > room:
                self._feed_up_to_head_limit(data, room)
                return
            self.head_room = room - len(data)
        HttpToolsProtocol.data_received(self, data)

    def _feed_up_to_head_limit(self, data: bytes, room: int) -> None:
        super().data_received(data[:room])
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return  # answered already (a malformed request), or upgraded to WebSocket
        if self.head_room is not None:
            self.refuse_request_head()
            return
        self.data_received(data[room:])  # the body, or requests pipelined after it

    def on_headers_complete(self) -> None:
        self.head_room = None
        HttpToolsProtocol.on_headers_complete(self)

    def refuse_request_head(self) -> None:
        """Answer a request head over the limit, and close.

        The app answers (wspush's counts and logs it, and adds the CORS header, from
        the headers read so far); any other app's clients get a plain 431. What the
        client sends after that is read and dropped, so that closing does not reset
        the connection before the client has read its answer (as Go's server does).
        """
        self.head_room = DISCARDING
        scope: Any = self.scope or {"type": "http", "headers": [], "client": self.client}
        scope.setdefault("path", self.url.partition(b"?")[0].decode("latin-1"))
        refuse, scope = task_free_opener(self.app, "refuse_request_head", scope)
        if refuse is None:
            body = b"request head too large\n"
            status, headers = 431, [(b"content-type", b"text/plain; charset=utf-8")]
            headers += [(b"content-length", b"%d" % len(body)), (b"connection", b"close")]
        else:
            response = refuse(scope)  # with `connection: close`, as every 431 of the app
            status, headers, body = response.status_code, response.raw_headers, response.body
        head = [STATUS_LINE[status]]
        for name, value in [*self.server_state.default_headers, *headers]:
            head += [name, b": ", value, b"\r\n"]
        head += [b"\r\n", body]
        transport = self.transport
        transport.write(b"".join(head))
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(KICK_GRACE, transport.close)

    def _should_upgrade(self) -> bool:
        """uvicorn's, remembered for the request: uvicorn asks up to three times."""
        headers = self.headers
        if self.upgrade_of is not headers:
            self.upgrading = super()._should_upgrade()
            self.upgrade_of = headers
        return self.upgrading

    def handle_websocket_upgrade(self) -> None:
        """Hand a plain handshake to wspush's WebSocket protocol as parsed; anything else
        (or another WebSocket protocol, or compression) takes uvicorn's way."""
        ws_class = self.ws_protocol_class
        scope = self.scope
        if (
            not isinstance(ws_class, type)
            or not issubclass(ws_class, WebSocketsSansIODirectProtocol)
            or self.config.ws_per_message_deflate
        ):
            super().handle_websocket_upgrade()
            return
        key = plain_handshake_key(
            scope["method"], scope["http_version"], self.url, scope["headers"]
        )
        if key is None:
            super().handle_websocket_upgrade()
            return
        self.connections.discard(self)
        protocol = ws_class.for_parsed_handshake(self)
        protocol.open_parsed(self.url, self.headers, key)
        self.transport.set_protocol(protocol)
        # The parser and this protocol refer to each other; without the cycle, both go
        # at once instead of waiting for the cyclic GC (which would also scan them).
        self.parser = None  # type: ignore[assignment]

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        """Start a request: with the lightweight event and the direct-write extension,
        and without a task when the app can open the stream at once."""
        # Nothing waits on the event before the task starts; keep whether it is set.
        cycle.message_event = LightEvent(cycle.message_event.is_set())  # type: ignore[assignment]
        writer = HTTPDirectWriter(cycle)
        scope: Any = cycle.scope
        extensions = scope.get("extensions") or {}
        scope["extensions"] = {
            **extensions,
            DIRECT_WRITE: {"writer": writer},
            HEAD_LIMITED: LIMITED,
        }
        if app is self.app and self._open_without_task(cycle, writer):
            return
        super()._start_asgi_task(cycle, app)

    def _open_without_task(self, cycle: RequestResponseCycle, writer: HTTPDirectWriter) -> bool:
        """Let an app that can (wspush's own) open an SSE stream without a task.

        An idle stream then costs no task and no suspended coroutines, and opening it
        no trip through the ASGI call chain. The app gets the scope its proxy-headers
        middleware would pass on; the head goes out through uvicorn's own `send`.
        """
        if cycle.flow.write_paused or has_request_body(cycle.scope["headers"]):
            return False
        opener, scope = task_free_opener(self.app, "open_sse_now", cycle.scope)
        if opener is None:
            return False
        stream: TaskFreeStream | None = opener(scope, writer)
        if stream is None:
            return False
        cycle.scope = scope
        response_heads(self.server_state).start(cycle, stream.status_code, stream.raw_headers)
        stream.opened(cycle.send)
        self.stream = stream
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.disconnected()


class HeadRecorder:
    """A transport stand-in that keeps what is written to it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


class ResponseHeads:
    """Response heads of task-free streams, encoded once and written as bytes.

    uvicorn's `send` checks every header against two regular expressions and builds the
    head anew for each response: about a fifth of the CPU an SSE stream costs to open.
    Every stream of a relay has the same head, apart from uvicorn's `Date` (renewed
    once a second, as a new default-headers list) and an echoed CORS origin. This
    encodes each distinct head with uvicorn's own `send`, on a stand-in transport, and
    then writes the bytes, leaving the cycle in the state `send` would have.
    """

    __slots__ = ("defaults", "heads")

    def __init__(self) -> None:
        self.defaults: list[tuple[bytes, bytes]] | None = None
        self.heads: dict[tuple[Any, ...], tuple[bytes, bool | None, bool]] = {}

    def start(
        self, cycle: RequestResponseCycle, status: int, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """What `cycle.send` does for `http.response.start` (not paused for writing)."""
        message: Any = {"type": "http.response.start", "status": status, "headers": headers}
        if cycle.access_log:  # one access-log line per response: uvicorn's send writes it
            run_now(cycle.send(message))
            return
        if cycle.default_headers is not self.defaults:
            self.defaults = cycle.default_headers
            self.heads = {}
        key = (status, cycle.keep_alive, cycle.scope["method"], *headers)
        head = self.heads.get(key)
        if head is None:
            head = self.heads[key] = self._encode(cycle, message)
        data, cycle.chunked_encoding, cycle.keep_alive = head
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        cycle.transport.write(data)

    @staticmethod
    def _encode(cycle: RequestResponseCycle, message: Any) -> tuple[bytes, bool | None, bool]:
        recorder = HeadRecorder()
        probe = RequestResponseCycle(
            scope=cycle.scope,
            transport=recorder,  # type: ignore[arg-type]
            flow=cycle.flow,
            logger=cycle.logger,
            access_logger=cycle.access_logger,
            access_log=False,
            default_headers=cycle.default_headers,
            message_event=LightEvent(),  # type: ignore[arg-type]
            expect_100_continue=False,
            keep_alive=cycle.keep_alive,
            on_response=lambda: None,
        )
        run_now(probe.send(message))
        return b"".join(recorder.written), probe.chunked_encoding, probe.keep_alive


def response_heads(server_state: ServerState) -> ResponseHeads:
    """The server's head cache, kept with the state its connections share."""
    heads: ResponseHeads | None = getattr(server_state, "wspush_response_heads", None)
    if heads is None:
        heads = ResponseHeads()
        server_state.wspush_response_heads = heads  # type: ignore[attr-defined]
    return heads


def has_request_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request says it has a body (nobody would read it on a task-free stream)."""
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


def run_now(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that has nothing to wait for to its end, here and now.

    uvicorn's `send` of a response head waits only while writing is paused, which the
    caller has ruled out; if it waits anyway, that is a bug, not a slow client.
    """
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("a coroutine expected to finish at once had to wait")


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

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake, as uvicorn does for `websocket.close`."""
        if not self.is_open():
            return
        protocol = self.protocol
        protocol.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self._send_close(code, reason)
        protocol.close_timer = protocol.loop.call_later(
            protocol.close_timeout, protocol.transport.close
        )

    def kick(self, code: int) -> None:
        if not self.is_open():
            return
        self._send_close(code, "too slow")
        self.protocol.loop.call_later(KICK_GRACE, self.protocol.transport.abort)

    def _send_close(self, code: int, reason: str) -> None:
        protocol = self.protocol
        protocol.conn.send_close(code, reason)
        protocol.transport.write(b"".join(protocol.conn.data_to_send()))
        protocol.close_sent = True


class WebSocketsSansIODirectProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, plus the direct-write extension.

    It is also lighter for long-lived connections: its receive queue and writable event
    are the lightweight ones, and it lets go of the handshake request and response once
    the connection is open (uvicorn keeps both for the connection's life).
    """

    _conn: ServerProtocol | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = LightQueue()  # type: ignore[assignment]
        self.writable = LightEvent(True)  # type: ignore[assignment]
        self.handshake_key: bytes | None = None
        self.task_free = False  # accepted by `open_websocket_now`, without a task

    @classmethod
    def for_parsed_handshake(cls, http: HttpToolsProtocol) -> WebSocketsSansIODirectProtocol:
        """The protocol for a handshake `http` parsed, already on its transport.

        uvicorn's constructor and `connection_made`, without what `open_parsed` replaces:
        a `ServerProtocol` waiting for the request, an `asyncio.Queue` and `Event`, and
        the addresses the HTTP protocol already looked up (about a tenth of the CPU a
        WebSocket costs to open). The attributes are uvicorn's own, all of them
        (tests/test_connections.py checks that against uvicorn's constructor).
        """
        self = cls.__new__(cls)
        config = http.config
        self.config = config
        self.app = config.loaded_app
        self.loop = http.loop
        self.logger = http.logger
        self.root_path = config.root_path
        self.asgi_version = config.asgi_version
        self.app_state = http.app_state
        server_state = http.server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.default_headers = server_state.default_headers
        self.queue = LightQueue()  # type: ignore[assignment]
        self.handshake_initiated = False
        self.handshake_complete = False
        self.close_sent = False
        self.disconnected = False
        self.close_timer = None
        self.close_timeout = 10.0
        self.initial_response = None
        self.read_paused = False
        self.writable = LightEvent(True)  # type: ignore[assignment]
        self.ping_interval = config.ws_ping_interval
        self.ping_timeout = config.ws_ping_timeout
        self.ping_timer = None
        self.pong_timer = None
        self.pending_ping_payload = None
        self.ping_sent_at = 0.0
        self.last_ping_rtt = 0.0
        self.frames = []
        self.curr_msg_data_type = "bytes"
        self.handshake_key = None
        self.task_free = False
        self._conn = None  # built on first use: see `conn`
        # connection_made
        self.connections.add(self)
        self.transport = http.transport
        self.server = http.server
        self.client = http.client
        self.scheme = "wss" if http.scheme == "https" else "ws"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = "{}:{} - ".format(*self.client) if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sWebSocket connection made", prefix)
        return self

    @property
    def conn(self) -> ServerProtocol:
        """websockets' protocol state machine, built when something first needs it.

        After a parsed handshake the connection is already open, and an idle one never
        needs it: the 101 and every frame wspush writes are encoded without it. Only a
        frame from the client, a close, or a send through plain ASGI builds it.
        """
        conn = self._conn
        if conn is None:
            conn = self._conn = ServerProtocol(
                state=OPEN, max_size=self.config.ws_max_size, logger=self.logger
            )
        return conn

    @conn.setter
    def conn(self, conn: ServerProtocol) -> None:
        self._conn = conn

    def open_parsed(self, target: bytes, headers: list[tuple[bytes, bytes]], key: bytes) -> None:
        """Start on a handshake the HTTP protocol parsed and `plain_handshake_key` checked:
        the scope uvicorn's `handle_connect` would build, without parsing it again."""
        self.handshake_initiated = True
        self.handshake_key = key
        raw_path, _, query_string = target.decode("ascii").partition("?")
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": self.root_path,
            "path": self.root_path + unquote(raw_path),
            "raw_path": self.root_path.encode("ascii") + raw_path.encode("ascii"),
            "query_string": query_string.encode("ascii"),
            "headers": headers,
            "subprotocols": [],
            "state": self.app_state.copy(),
            "extensions": {
                "websocket.http.response": {},
                DIRECT_WRITE: {"writer": WebSocketDirectWriter(self)},
                HEAD_LIMITED: LIMITED,  # by the HTTP protocol that parsed it
            },
        }
        if self._open_without_task():
            return
        self.queue.put_nowait({"type": "websocket.connect"})
        # uvicorn's run_asgi: the scope already has the extension, so without the
        # coroutine `run_asgi` below adds (it would stay suspended for the connection).
        task = self.loop.create_task(super().run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    def _open_without_task(self) -> bool:
        """Let an app that can (wspush's own) accept the connection without a task.

        An idle WebSocket then costs no task and no suspended coroutines, and opening
        it no trip through the ASGI call chain. The app gets the scope its proxy-headers
        middleware would pass on.
        """
        opener, scope = task_free_opener(self.app, "open_websocket_now", self.scope)
        if opener is None:
            return False
        endpoint = opener(scope, scope["extensions"][DIRECT_WRITE]["writer"])
        if endpoint is None:
            return False
        self.scope = scope
        self.queue = endpoint
        self.task_free = True
        self._accept_parsed({"type": "websocket.accept"})
        endpoint.opened()
        return True

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.handshake_initiated and not self.transport.is_closing():
            self._send_handshake_refusal()

    def _send_handshake_refusal(self) -> None:
        """Write websockets' refusal of a request it could not parse, and close.

        uvicorn's protocol writes what websockets has to send only once a request or a
        frame comes out of it; a refusal of the request itself would never be sent, and
        the client would wait for an answer for ever.
        """
        refusal = self.conn.data_to_send()
        if refusal:
            self.handshake_complete = self.close_sent = True
            self.transport.write(b"".join(refusal))
            self.transport.close()

    def send_receive_event_to_app(self) -> None:
        super().send_receive_event_to_app()
        if self.task_free and self.read_paused:
            # uvicorn pauses reading until the app's receive(); the endpoint already has it.
            self.read_paused = False
            self.transport.resume_reading()

    async def send(self, message: Any) -> None:
        if (
            self.handshake_key is not None
            and message["type"] == "websocket.accept"
            and not self.handshake_complete
            and self.initial_response is None
        ):
            await self.writable.wait()
            if self.disconnected:
                raise ClientDisconnected()
            self._accept_parsed(message)
            return
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # The denial response is complete. uvicorn does not count that as a finished
            # handshake and logs an ERROR for every refused WebSocket; this one is done.
            self.handshake_complete = True
        if self.handshake_complete and getattr(self, "response", None) is not None:
            self.release_handshake()

    def _accept_parsed(self, message: Any) -> None:
        """`websocket.accept` after `open_parsed`: the 101 uvicorn's `send` would write."""
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info(
                '%s - "WebSocket %s" [accepted]',
                get_client_addr(self.scope),
                get_path_with_query_string(self.scope),
            )
        headers = [*self.default_headers, *message.get("headers", [])]
        response = switching_protocols(self.handshake_key, headers, message.get("subprotocol"))  # type: ignore[arg-type]
        self.handshake_key = None
        if not self.transport.is_closing():
            self.handshake_complete = True
            self.transport.write(response)
            self.start_keepalive()

    def release_handshake(self) -> None:
        """Forget the handshake's HTTP request and response, which are not used again.

        websockets' parser generator keeps the request object itself, so its headers
        are emptied rather than just dereferenced.
        """
        request = getattr(self, "request", None)
        if request is not None:
            request.headers.clear()
            self.request = None  # type: ignore[assignment]
        self.response = None  # type: ignore[assignment]

    async def run_asgi(self) -> None:
        """uvicorn's, with the direct-write extension (a handshake uvicorn parsed)."""
        extensions = dict(self.scope.get("extensions") or {})
        extensions[DIRECT_WRITE] = {"writer": WebSocketDirectWriter(self)}
        self.scope["extensions"] = extensions
        await super().run_asgi()

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
