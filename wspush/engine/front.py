"""The protocol every connection starts on: a relay stream opened from the first head,
everything else handed to `HttpToolsDirectProtocol` as it came.

Nearly every connection a relay accepts is one request that opens a stream and then
stays: an SSE GET or a WebSocket handshake. uvicorn's HTTP protocol builds for each
what a general HTTP/1.1 server needs (a pipeline, keep-alive timers, per-header
callbacks that build the scope as they go, and for an upgrade, a second scope).
`FrontProtocol` parses the first head with httptools and, when it is one wspush's app
opens at once (see `wspush.contract.TaskFreeStream`), opens it from what it parsed:
- a plain WebSocket handshake goes to `WebSocketsSansIODirectProtocol.for_parsed_handshake`,
  as `HttpToolsDirectProtocol` hands it over;
- an SSE GET is served on uvicorn's own `RequestResponseCycle`, as in
  `HttpToolsDirectProtocol._open_without_task`, and when the stream ends, the
  connection goes on under `HttpToolsDirectProtocol`.

Anything else (another method or path, a body, HTTP/1.0, pipelined bytes, a head the
app refuses or that is over the limit, a parse error) is handed to
`HttpToolsDirectProtocol` before anything is answered: it gets the connection, then the
bytes as received, so every answer and edge case is that protocol's, and so uvicorn's.
What the app added to the scope before declining (a refusal it decided) is carried over
to the scope the successor builds, so that nothing is decided or counted twice.

Upstream touched (checked against uvicorn 0.54.0 and httptools 0.9.0, as
`wspush.engine.http`): the protocol-class signature uvicorn's `Server` constructs
(`config`, `server_state`, `app_state`, `_loop`); `Config.loaded_app`, `root_path`,
`asgi_version`, `limit_concurrency`, `ws_per_message_deflate`, `ws_protocol_class`;
`ServerState.connections`, `tasks`, `default_headers`, `total_requests`;
`RequestResponseCycle`'s constructor and `send`, `response_complete`, `keep_alive`,
`more_body`, `disconnected`, `message_event`; httptools' `HttpRequestParser`
(`feed_data`, `get_method`, `get_http_version`, `should_keep_alive`,
`HttpParserUpgrade`, `HttpParserError`) and `parse_url`.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.server import ServerState

from wspush.contract import DIRECT_WRITE, HEAD_LIMITED, TaskFreeStream
from wspush.engine.handshake import plain_handshake_key
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
from wspush.engine.proxy import open_without_task
from wspush.engine.websocket import LIMITED, WebSocketsSansIODirectProtocol
from wspush.lightweight import LightEvent

# What the parser of a connection's first head has found.
READING, COMPLETE, UPGRADE, HAND_OVER = range(4)


class FrontProtocol(asyncio.Protocol):
    """A connection until its first request is known: a relay stream opened here, or
    the connection handed to `HttpToolsDirectProtocol` (see the module's docstring).

    It offers what uvicorn's `Server` asks of every connection it keeps in
    `server_state.connections` (`shutdown`), and what the WebSocket protocol's
    `for_parsed_handshake` reads of the HTTP protocol it comes from. An SSE stream keeps
    it for hours, so it has slots and lets go of the head once the stream is open.
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
        "plain_get",
        "reading_paused",
        "received",
        "scheme",
        "server",
        "server_state",
        "state",
        "stream",
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
        self.state = READING
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.plain_get = False  # a GET over HTTP/1.1, keeping or upgrading the connection
        self.cycle: RequestResponseCycle | None = None  # an SSE stream's, once open
        self.stream: TaskFreeStream | None = None
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
        self._parse(data)
        if self.state == COMPLETE:
            self._open_sse()
        elif self.state == UPGRADE:
            self._open_websocket()
        elif self.state == HAND_OVER:
            self.hand_over()

    def connection_lost(self, exc: Exception | None) -> None:
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

    def pause_writing(self) -> None:
        if self.flow is not None:
            self.flow.pause_writing()

    def resume_writing(self) -> None:
        if self.flow is not None:
            self.flow.resume_writing()

    def shutdown(self) -> None:
        """uvicorn's server is exiting: as its HTTP protocol, close an idle connection,
        and let an open response finish, then close."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
        else:
            self.cycle.keep_alive = False

    # -- httptools' callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.url:  # a second request in the first read: pipelining is for uvicorn's
            self.state = HAND_OVER

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        # Asked here: once the message is complete, the parser has moved on from it.
        parser: Any = self.parser
        self.plain_get = (
            parser.get_method() == b"GET"
            and parser.get_http_version() == "1.1"
            and (parser.should_upgrade() or parser.should_keep_alive())
        )

    def on_message_complete(self) -> None:
        if self.state == READING:
            self.state = COMPLETE

    # -- the first request ----------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # Bytes after the head (frames sent before the 101) are for uvicorn's path.
            upgraded_at = upgrade.args[0] if upgrade.args else len(data)
            self.state = UPGRADE if upgraded_at == len(data) else HAND_OVER
        except httptools.HttpParserError:
            self.state = HAND_OVER  # which answers 400
            return
        if self.state in (COMPLETE, UPGRADE) and not self._plain_request():
            self.state = HAND_OVER

    def _plain_request(self) -> bool:
        """A GET over HTTP/1.1 keeping its connection (or upgrading it), without a body
        or `Expect`, on a server under any concurrency limit: what a stream opens from."""
        limit = self.config.limit_concurrency
        return (
            self.plain_get
            and (limit is None or not self._over_concurrency_limit(limit))
            and not has_request_body(self.headers)
            and all(name != b"expect" for name, _ in self.headers)
        )

    def _over_concurrency_limit(self, limit: int) -> bool:
        tasks = self.server_state.tasks
        return len(self.connections) >= limit or len(tasks) >= limit

    def _open_websocket(self) -> None:
        """A plain handshake to wspush's WebSocket protocol, as `HttpToolsDirectProtocol`
        hands one over; anything else is that protocol's."""
        ws_class = self.config.ws_protocol_class
        if (
            not isinstance(ws_class, type)
            or not issubclass(ws_class, WebSocketsSansIODirectProtocol)
            or self.config.ws_per_message_deflate
            or not self._upgrades_to_websocket()
        ):
            self.hand_over()
            return
        key = plain_handshake_key("GET", "1.1", self.url, self.headers)
        if key is None:
            self.hand_over()
            return
        self.connections.discard(self)
        protocol = ws_class.for_parsed_handshake(self)  # type: ignore[arg-type]
        protocol.open_parsed(self.url, self.headers, key)
        self.transport.set_protocol(protocol)
        self.parser = None

    def _upgrades_to_websocket(self) -> bool:
        """uvicorn's test: `Connection` lists `upgrade` and `Upgrade` is `websocket`."""
        connection: list[bytes] = []
        upgrade = None
        for name, value in self.headers:
            if name == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
            elif name == b"upgrade":
                upgrade = value.lower()
        return upgrade == b"websocket" and b"upgrade" in connection

    def _open_sse(self) -> None:
        """An SSE stream the app opens at once, on uvicorn's request cycle, as
        `HttpToolsDirectProtocol._open_without_task` opens one; else a hand-over."""
        scope = self._http_scope()
        self.flow = flow = LightFlowControl(self.transport)
        cycle = RequestResponseCycle(
            scope=scope,  # type: ignore[arg-type]
            transport=self.transport,
            flow=flow,
            logger=self.logger,
            access_logger=ACCESS_LOGGER,
            access_log=False,
            default_headers=self.server_state.default_headers,
            message_event=LightEvent(True),  # type: ignore[arg-type]  # the request is whole
            expect_100_continue=False,
            keep_alive=True,
            on_response=self._response_complete,
        )
        cycle.more_body = False
        writer = HTTPDirectWriter(cycle)
        scope["extensions"] = {DIRECT_WRITE: {"writer": writer}, HEAD_LIMITED: LIMITED}
        built = set(scope)
        stream: TaskFreeStream | None
        stream, _ = open_without_task(self.app, "open_sse_now", scope, writer)
        if stream is None:
            self.hand_over({key: scope[key] for key in scope.keys() - built})
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
