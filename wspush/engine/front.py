"""The protocol every connection starts on: a relay stream opened from the first head,
everything else handed to `HttpToolsDirectProtocol` as it came.

Nearly every connection a relay accepts is one request that opens a stream and then
stays: an SSE GET or a WebSocket handshake. uvicorn's HTTP protocol builds for each
what a general HTTP/1.1 server needs (a pipeline, keep-alive timers, per-header
callbacks that build the scope as they go, and for an upgrade, a second scope).
`FrontProtocol` has httptools check the first head, with no callbacks, reads it in one
pass once it is whole, and, when it is one wspush's app opens at once (see
`wspush.contract.TaskFreeStream`), opens it from what it read:
- a plain WebSocket handshake goes to `WebSocketsSansIODirectProtocol.for_parsed_handshake`,
  as `HttpToolsDirectProtocol` hands it over, and this protocol passes the connection's
  events on to it (so the transport's reading is not restarted, as `set_protocol`
  would);
- an SSE GET is served on uvicorn's own request cycle (`StreamCycle`), as in
  `HttpToolsDirectProtocol._open_without_task`, and when the stream ends, the
  connection goes on under `HttpToolsDirectProtocol`.

Anything else (another method or path, a body, HTTP/1.0, pipelined bytes, a repeated
header, a head the app refuses or that is over the limit, a parse error) is handed to
`HttpToolsDirectProtocol` before anything is answered: it gets the connection, then the
bytes as received, so every answer and edge case is that protocol's, and so uvicorn's.
What the app added to the scope before declining (a refusal it decided) is carried over
to the scope the successor builds, so that nothing is decided or counted twice.

Upstream touched (checked against uvicorn 0.54.0 and httptools 0.9.0, as
`wspush.engine.http`): the protocol-class signature uvicorn's `Server` constructs
(`config`, `server_state`, `app_state`, `_loop`); `Config.loaded_app`, `root_path`,
`asgi_version`, `limit_concurrency`, `ws_per_message_deflate`, `ws_protocol_class`;
`ServerState.connections`, `tasks`, `default_headers`, `total_requests`;
`RequestResponseCycle`'s constructor (restated by `StreamCycle`) and `send`,
`response_complete`, `keep_alive`, `more_body`, `disconnected`, `message_event`;
httptools' `HttpRequestParser` (`feed_data`, `HttpParserUpgrade`, `HttpParserError`,
and that a value it passes has no leading whitespace) and `parse_url`.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.server import ServerState

from wspush.contract import DIRECT_WRITE, HEAD_LIMITED, TaskFreeStream
from wspush.engine.handshake import handshake_key
from wspush.engine.heads import response_heads
from wspush.engine.http import (
    ACCESS_LOGGER,
    ERROR_LOGGER,
    HTTPDirectWriter,
    HttpToolsDirectProtocol,
    LightFlowControl,
    has_request_body,
    request_head_limit,
    server_loop,
    transport_addresses,
)
from wspush.engine.proxy import forwarding_headers, open_without_task
from wspush.engine.websocket import LIMITED, WebSocketsSansIODirectProtocol
from wspush.lightweight import LightEvent

# What `_http_scope` and `_open_sse` put in a scope: anything else the app added.
HTTP_SCOPE_KEYS = frozenset(
    (
        "type",
        "asgi",
        "http_version",
        "server",
        "client",
        "scheme",
        "root_path",
        "headers",
        "state",
        "method",
        "path",
        "raw_path",
        "query_string",
        "extensions",
    )
)


class NoCallbacks:
    """What httptools' parser of a first head reports to: nothing (see `_open`). Each
    callback it looks up is there, as None: a missing one would cost it an exception."""

    __slots__ = ()
    on_message_begin = on_url = on_status = on_header = on_headers_complete = None
    on_body = on_message_complete = on_chunk_header = on_chunk_complete = None


NO_CALLBACKS = NoCallbacks()


class StreamCycle(RequestResponseCycle):
    """uvicorn's request cycle, for an SSE stream the front protocol opens: a whole GET
    (no body to come), kept alive, without an access log.

    Its constructor is uvicorn's for those arguments, restated: what every such cycle
    starts with is a class attribute, so an instance holds only its own (a stream keeps
    its cycle for hours; `wspush.engine.compat` checks that nothing of uvicorn's is left
    out). What the hub reads for every delivery is the instance's own, which is quicker.
    """

    logger = ERROR_LOGGER
    access_logger = ACCESS_LOGGER
    access_log = False
    keep_alive = True
    waiting_for_100_continue = False
    more_body = False
    chunked_encoding: bool | None = None
    expected_content_length = 0

    def __init__(
        self,
        scope: Any,
        transport: asyncio.Transport,
        flow: LightFlowControl,
        default_headers: list[tuple[bytes, bytes]],
        on_response: Callable[..., None],
    ) -> None:
        self.scope = scope
        self.transport = transport
        self.flow = flow
        self.default_headers = default_headers
        self.on_response = on_response
        self.message_event = LightEvent(True)  # type: ignore[assignment]  # the request is whole
        self.body = bytearray()
        self.disconnected = False
        self.response_started = False
        self.response_complete = False


class FrontProtocol(asyncio.Protocol):
    """A connection until its first request is known: a relay stream opened here, or
    the connection handed to `HttpToolsDirectProtocol` (see the module's docstring).

    It offers what uvicorn's `Server` asks of every connection it keeps in
    `server_state.connections` (`shutdown`), and what the WebSocket protocol's
    `for_parsed_handshake` reads of the HTTP protocol it comes from. An SSE stream keeps
    it for hours, so it has slots and lets go of the head once the stream is open. A
    WebSocket keeps it too, as the transport's protocol that passes every event on to
    the WebSocket protocol (`successor`), which is in `server_state.connections`.
    """

    __slots__ = (
        "app",
        "app_state",
        "client",
        "config",
        "connections",
        "cycle",
        "flow",
        "headers",
        "held",
        "logger",
        "loop",
        "parser",
        "reading_paused",
        "received",
        "scheme",
        "server",
        "server_state",
        "stream",
        "successor",
        "transport",
        "url",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:  # as uvicorn's protocols do
            config.load()
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.app = config.loaded_app
        self.loop = _loop or server_loop(server_state)
        self.logger = ERROR_LOGGER
        self.connections = server_state.connections
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.flow: LightFlowControl | None = None
        self.received = b""  # the first head's bytes, for a hand-over
        self.parser: httptools.HttpRequestParser | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.cycle: RequestResponseCycle | None = None  # an SSE stream's, once open
        self.stream: TaskFreeStream | None = None
        self.successor: asyncio.Protocol | None = None  # an open WebSocket's protocol
        self.held = b""  # what the client sent after an SSE request, for after it
        self.reading_paused = False

    # -- asyncio ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.connections.add(self)  # type: ignore[arg-type]  # uvicorn's shutdown closes it
        self.transport = transport
        self.server, self.client = transport_addresses(transport)
        if transport.get_extra_info("sslcontext"):
            self.scheme = "https"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = "{}:{} - ".format(*self.client) if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)

    def data_received(self, data: bytes) -> None:
        if self.successor is not None:
            self.successor.data_received(data)
            return
        if self.cycle is not None:  # an open SSE stream: the next request waits for its end
            self.held += data
            if not self.reading_paused:
                self.reading_paused = True
                self.transport.pause_reading()
            return
        self.received += data
        if len(self.received) > request_head_limit(self.server_state, self.app):
            self.hand_over()  # which answers 431
            return
        upgrade = self._parse(data)
        if upgrade is None:
            self.hand_over()  # which answers 400
            return
        received = self.received
        end = received.find(b"\r\n\r\n")
        if end < 0:
            return  # the rest of the head is still to come
        if end + 4 != len(received):
            self.hand_over()  # a body, a pipelined request, or frames before the 101
            return
        self._open(received[:end], upgrade)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.successor is not None:
            self.successor.connection_lost(exc)
            return
        self.connections.discard(self)
        cycle = self.cycle
        if cycle is not None:
            if not cycle.response_complete:
                cycle.disconnected = True
            cycle.message_event.set()
        if self.flow is not None:
            self.flow.resume_writing()
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.disconnected()
        self.parser = None

    def eof_received(self) -> bool | None:
        if self.successor is not None:
            return self.successor.eof_received()
        return None

    def pause_writing(self) -> None:
        if self.successor is not None:
            self.successor.pause_writing()
        elif self.flow is not None:
            self.flow.pause_writing()

    def resume_writing(self) -> None:
        if self.successor is not None:
            self.successor.resume_writing()
        elif self.flow is not None:
            self.flow.resume_writing()

    def shutdown(self) -> None:
        """uvicorn's server is exiting: as its HTTP protocol, close an idle connection,
        and let an open response finish, then close."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
        else:
            self.cycle.keep_alive = False

    # -- the first request ----------------------------------------------------------------

    def _parse(self, data: bytes) -> bool | None:
        """Feed httptools' parser, which checks the head as uvicorn's protocol would have
        it checked: whether it asks for an upgrade, or None for a head it rejects."""
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(NO_CALLBACKS)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            return True
        except httptools.HttpParserError:
            return None
        return False

    def _open(self, head: bytes, upgrade: bool) -> None:
        """Open the stream a whole head the parser accepted asks for, or hand it over.

        The parser has checked its syntax, so the head is read here in one go rather
        than through a Python callback per header: a request line of three parts, then
        `name: value` lines (httptools gives a value without its leading whitespace).
        """
        lines = head.split(b"\r\n")
        request_line = lines[0].split(b" ")
        headers = [
            (name.lower(), value.lstrip(b" \t"))
            for name, _, value in [line.partition(b":") for line in lines[1:]]
        ]
        self.headers = headers
        fields = dict(headers)
        if (
            len(request_line) != 3
            or request_line[0] != b"GET"
            or request_line[2] != b"HTTP/1.1"
            or len(fields) != len(headers)  # a repeated header: uvicorn's path decides
            or not self._plain_request(fields)
        ):
            self.hand_over()
            return
        self.url = request_line[1]
        if upgrade:
            self._open_websocket(fields)
        else:
            self._open_sse(forwarding_headers(fields))

    def _plain_request(self, fields: dict[bytes, bytes]) -> bool:
        """A GET over HTTP/1.1 keeping its connection (or upgrading it), without a body
        or `Expect`, on a server under any concurrency limit: what a stream opens from."""
        connection = fields.get(b"connection")
        limit = self.config.limit_concurrency
        return (
            (connection is None or connection.lower().find(b"close") < 0)
            and not has_request_body(fields)
            and b"expect" not in fields
            and (limit is None or not self._over_concurrency_limit(limit))
        )

    def _over_concurrency_limit(self, limit: int) -> bool:
        tasks = self.server_state.tasks
        return len(self.connections) >= limit or len(tasks) >= limit

    def _open_websocket(self, fields: dict[bytes, bytes]) -> None:
        """A plain handshake to wspush's WebSocket protocol, as `HttpToolsDirectProtocol`
        hands one over; anything else is that protocol's.

        `handshake_key` asks for `Upgrade: websocket` and a `Connection` listing
        `upgrade`, so what it accepts, uvicorn's own test takes for a WebSocket too."""
        ws_class: Any = self.config.ws_protocol_class
        key = None
        if (
            isinstance(ws_class, type)
            and issubclass(ws_class, WebSocketsSansIODirectProtocol)
            and not self.config.ws_per_message_deflate
            and self.url.isascii()
        ):
            key = handshake_key(fields)
        if key is None:
            self.hand_over()
            return
        self.connections.discard(self)
        protocol = ws_class.for_parsed_handshake(self)
        protocol.open_parsed(self.url, self.headers, key, forwarding_headers(fields))
        # The transport keeps this protocol, which passes everything on: uvloop's
        # `set_protocol` restarts reading, which costs the kernel an epoll update.
        self.successor = protocol
        self.parser = None
        self.received = self.url = b""

    def _open_sse(self, forwarded: bool) -> None:
        """An SSE stream the app opens at once, on uvicorn's request cycle, as
        `HttpToolsDirectProtocol._open_without_task` opens one; else a hand-over."""
        scope = self._http_scope()
        self.flow = flow = LightFlowControl(self.transport)
        cycle = StreamCycle(
            scope, self.transport, flow, self.server_state.default_headers, self._response_complete
        )
        writer = HTTPDirectWriter(cycle)
        scope["extensions"] = {DIRECT_WRITE: {"writer": writer}, HEAD_LIMITED: LIMITED}
        stream: TaskFreeStream | None
        stream, _ = open_without_task(self.app, "open_sse_now", scope, writer, forwarded)
        if stream is None:
            self.hand_over({key: scope[key] for key in scope.keys() - HTTP_SCOPE_KEYS})
            return
        self.cycle = cycle
        self.parser = None
        self.received = b""
        response_heads(self.server_state).start(cycle, stream.status_code, stream.raw_headers)
        stream.opened(cycle.send)
        self.stream = stream

    def _http_scope(self) -> dict[str, Any]:
        """The scope uvicorn's HTTP protocol builds for this request (a test compares)."""
        config = self.config
        root_path = config.root_path
        parsed = httptools.parse_url(self.url)
        raw_path = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        return {
            "type": "http",
            "asgi": {"version": config.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
            "method": "GET",
            "path": root_path + path,
            "raw_path": root_path.encode("ascii") + raw_path,
            "query_string": parsed.query or b"",
        }

    def _response_complete(self) -> None:
        """The SSE stream has ended: the connection goes on as any other, under
        `HttpToolsDirectProtocol`, with what the client sent meanwhile."""
        self.stream = None
        if self.transport.is_closing():
            self.server_state.total_requests += 1
            return
        held, self.held = self.held, b""
        protocol = self._successor()
        protocol.on_response_complete()  # uvicorn's bookkeeping after a response
        if self.reading_paused:
            self.transport.resume_reading()
        if held:
            protocol.data_received(held)

    # -- the hand-over --------------------------------------------------------------------

    def hand_over(self, carried: dict[str, Any] | None = None) -> None:
        """Give the connection to `HttpToolsDirectProtocol`, with the bytes received so
        far, as if it had had it from the start; `carried`: what the app added to the
        scope of this request, for the scope the successor builds."""
        received, self.received = self.received, b""
        protocol = self._successor()
        protocol.carried_scope = carried or None
        if received:
            protocol.data_received(received)

    def _successor(self) -> HttpToolsDirectProtocol:
        self.connections.discard(self)
        self.parser = None
        protocol = HttpToolsDirectProtocol(
            self.config, self.server_state, self.app_state, _loop=self.loop
        )
        protocol.connection_made(self.transport)
        self.transport.set_protocol(protocol)
        return protocol
