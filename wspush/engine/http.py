"""uvicorn's httptools protocol, plus the direct-write extension and task-free SSE streams.

ASGI sends one message per call, and each call costs a chain of coroutines in the app
and the server. For a relay, every client of a token gets the same bytes, encoded once
per message; `HttpToolsDirectProtocol` offers the `wspush.direct_write` scope extension
(see `wspush.contract`), whose writer puts them on the transport with one call, and
opens an SSE stream of wspush's own app without a task. Handshakes, flow control and
everything else stay uvicorn's.

Upstream touched (checked against uvicorn 0.54.0 and httptools 0.9.0; `wspush.engine.
compat` checks them at start-up, and wspush serves through uvicorn's stock protocols if
any is missing):
- `uvicorn.protocols.http.httptools_impl.HttpToolsProtocol`: its constructor is
  restated (`config`, `app`, `loop`, `logger`, `access_logger`, `access_log`, `parser`,
  `ws_protocol_class`, `root_path`, `asgi_version`, `limit_concurrency`, `app_state`,
  `timeout_keep_alive_task`, `timeout_keep_alive`, `server_state`, `connections`,
  `tasks`, `transport`, `flow`, `server`, `client`, `scheme`, `pipeline`, `scope`,
  `headers`, `expect_100_continue`, `cycle`), as is `connection_made`; it overrides
  `_should_upgrade`, `handle_websocket_upgrade`, `_start_asgi_task` and
  `connection_lost`, `data_received` and `on_headers_complete` (the request-head limit),
  and reads `url`, `cycle.more_body` and `config.ws_per_message_deflate`;
- `uvicorn.protocols.http.httptools_impl.STATUS_LINE` (the head of a 431);
- `RequestResponseCycle`: `message_event`, `scope`, `flow`, `transport`,
  `response_started`, `response_complete`, `disconnected`, `chunked_encoding`, `send`;
- `uvicorn.protocols.http.flow_control.FlowControl`: `_transport`, `read_paused`,
  `write_paused`, `_is_writable_event`, `drain`;
- `httptools.HttpRequestParser` and its `set_dangerous_leniencies`;
- `uvicorn.logging.TRACE_LOG_LEVEL`, `uvicorn.config.Config`, `uvicorn.server.ServerState`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from wspush.contract import DIRECT_WRITE, HEAD_LIMITED, KICK_GRACE, TaskFreeStream
from wspush.engine.handshake import plain_handshake_key
from wspush.engine.heads import response_heads
from wspush.engine.proxy import app_method, open_without_task, past_proxy_headers
from wspush.engine.websocket import LIMITED, WebSocketsSansIODirectProtocol
from wspush.lightweight import LightEvent
from wspush.settings import DEFAULT_MAX_REQUEST_HEAD

# The loggers uvicorn's protocols look up on every connection (a lock and a dict lookup
# each time); loggers are process-wide singletons, so one lookup is the same logger.
ERROR_LOGGER = logging.getLogger("uvicorn.error")
ACCESS_LOGGER = logging.getLogger("uvicorn.access")
# `head_room` of a connection whose head was refused: what it sends is read and dropped
# until it closes, or `KICK_GRACE` after the answer.
DISCARDING = -1


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
        # `is_open` and not paused, inline: the hub asks this for every delivery.
        cycle = self.cycle
        return (
            cycle.response_started
            and not cycle.response_complete
            and not cycle.disconnected
            and not cycle.flow.write_paused
        )

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
        target = past_proxy_headers(app)
        limit = int(getattr(target, "max_request_head", DEFAULT_MAX_REQUEST_HEAD))
        server_state.wspush_max_request_head = limit  # type: ignore[attr-defined]
    return limit


def server_loop(server_state: ServerState) -> asyncio.AbstractEventLoop:
    """The event loop a server's connections run on, looked up once per server.

    uvicorn asks `asyncio.get_event_loop()` for every connection, and asyncio checks
    the process id on every call: one `getpid` system call per connection. A server's
    connections all come from the one loop that runs it.
    """
    loop: asyncio.AbstractEventLoop | None = getattr(server_state, "wspush_loop", None)
    if loop is None:
        loop = server_state.wspush_loop = asyncio.get_event_loop()  # type: ignore[attr-defined]
    return loop


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
        # uvicorn's constructor, attribute for attribute (tests/test_engine.py checks
        # that connections behave as uvicorn's), except where noted.
        if not config.loaded:
            config.load()
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or server_loop(server_state)
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
        # What the app added to the scope of the first request before `FrontProtocol`
        # handed the connection over (see `wspush.engine.front`), for that request's.
        self.carried_scope: dict[str, Any] | None = None
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
        refuse, _ = app_method(self.app, "refuse_request_head", scope)
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
        carried, self.carried_scope = self.carried_scope, None
        if carried:
            scope.update(carried)
        scope["extensions"] = {
            **(scope.get("extensions") or {}),
            DIRECT_WRITE: {"writer": writer},
            HEAD_LIMITED: LIMITED,
        }
        if app is self.app and not cycle.flow.write_paused:
            app = self._open_without_task(cycle, writer)
            if app is None:
                return
        super()._start_asgi_task(cycle, app)

    def _open_without_task(self, cycle: RequestResponseCycle, writer: HTTPDirectWriter) -> Any:
        """Let an app that can (wspush's own) open an SSE stream without a task; None
        if it did, else the app to call as usual.

        An idle stream then costs no task and no suspended coroutines, and opening it
        no trip through the ASGI call chain. The app gets the scope its proxy-headers
        middleware would pass on; the head goes out through uvicorn's own `send`.
        """
        if has_request_body(dict(cycle.scope["headers"])):
            return self.app
        stream: TaskFreeStream | None
        stream, app = open_without_task(self.app, "open_sse_now", cycle.scope, writer)  # type: ignore[arg-type]
        if stream is None:
            return app
        response_heads(self.server_state).start(cycle, stream.status_code, stream.raw_headers)
        stream.opened(cycle.send)
        self.stream = stream
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.disconnected()


def has_request_body(fields: Mapping[bytes, bytes]) -> bool:
    """Whether a request says it has a body (nobody would read it on a task-free stream).

    `fields`: its headers by lowercase name. httptools refuses a head with two
    `Content-Length`s, or with one and `Transfer-Encoding`, so a dict of a head it
    accepted loses nothing this asks about."""
    return b"transfer-encoding" in fields or fields.get(b"content-length", b"0") != b"0"
