"""uvicorn's websockets-sansio protocol, plus the direct-write extension, handshakes
answered from what httptools parsed, and accepted WebSockets without a task.

Upstream touched (checked against uvicorn 0.54.0 and websockets 17.4;
`wspush.engine.compat` checks them at start-up, and wspush serves through uvicorn's
stock protocols if any is missing):
- `uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol`: its
  constructor and `connection_made` are restated for a parsed handshake, in slots or
  as class defaults (`config`, `app`, `loop`, `logger`, `root_path`, `asgi_version`,
  `app_state`, `connections`, `tasks`, `default_headers`, `queue`,
  `handshake_initiated`, `handshake_complete`, `close_sent`, `disconnected`,
  `close_timer`, `close_timeout`, `initial_response`, `read_paused`, `writable`,
  `ping_interval`, `ping_timeout`, `ping_timer`, `pong_timer`, `pending_ping_payload`,
  `ping_sent_at`, `last_ping_rtt`, `frames`, `curr_msg_data_type`, `conn`,
  `transport`, `server`, `client`, `scheme`, `scope`);
  it overrides `send`, `run_asgi`, `send_receive_event_to_app`, `data_received` and
  `shutdown`, and calls
  `start_keepalive`, `stop_keepalive`, `on_task_complete`, `request` and `response`;
- the HTTP protocol's `config`, `loop`, `logger`, `app_state`, `server_state`
  (`connections`, `tasks`, `default_headers`), `transport`, `server`, `client`, `scheme`;
- `uvicorn.protocols.utils`: `ClientDisconnected`, `get_client_addr`,
  `get_path_with_query_string`;
- `websockets.server.ServerProtocol` (`state=`, `max_size=`, `logger=`, `send_close`,
  `data_to_send`) and `websockets.protocol.OPEN`.
"""

from __future__ import annotations

import logging
from asyncio import TimerHandle
from typing import Any, Literal
from urllib.parse import unquote

from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import ClientDisconnected, get_client_addr, get_path_with_query_string
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from wspush.contract import CLOSE_GOING_AWAY, DIRECT_WRITE, HEAD_LIMITED, KICK_GRACE
from wspush.engine.handshake import switching_protocols
from wspush.engine.proxy import open_without_task
from wspush.lightweight import LightEvent, LightQueue

LIMITED: dict[object, object] = {}  # `HEAD_LIMITED`'s value: nothing to say but that


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
        # `is_open` and writable, inline: the hub asks this for every delivery.
        protocol = self.protocol
        return (
            not protocol.close_sent
            and not protocol.transport.is_closing()
            and protocol.writable.is_set()
        )

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
        if protocol.read_paused:  # as uvicorn 0.54 does: read the client's close
            protocol.read_paused = False
            protocol.transport.resume_reading()
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

    # What a connection sets in its life, in slots: a long-lived connection then has
    # no attribute dictionary. (uvicorn's class has one; it comes into being only if
    # something else is set, such as the handshake uvicorn parses on its own path.)
    __slots__ = (
        "_conn",
        "app",
        "app_state",
        "asgi_version",
        "client",
        "close_sent",
        "close_timer",
        "config",
        "connections",
        "default_headers",
        "disconnected",
        "frames",
        "handshake_complete",
        "handshake_initiated",
        "handshake_key",
        "logger",
        "loop",
        "ping_interval",
        "ping_timeout",
        "queue",
        "read_paused",
        "root_path",
        "scheme",
        "scope",
        "server",
        "task_free",
        "tasks",
        "transport",
        "writable",
    )

    # The rest of uvicorn's state as it starts, for `for_parsed_handshake`: it is set
    # only on a ping, a pong or a message from the client.
    close_timeout = 10.0
    initial_response: tuple[int, list[tuple[str, str]], bytes] | None = None
    ping_timer: TimerHandle | None = None
    pong_timer: TimerHandle | None = None
    pending_ping_payload: bytes | None = None
    ping_sent_at = 0.0
    last_ping_rtt = 0.0
    curr_msg_data_type: Literal["text", "bytes"] = "bytes"

    _conn: ServerProtocol | None
    handshake_key: bytes | None
    task_free: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._conn = None
        self.handshake_key = None
        self.task_free = False  # accepted by `open_websocket_now`, without a task
        super().__init__(*args, **kwargs)
        self.queue = LightQueue()  # type: ignore[assignment]
        self.writable = LightEvent(True)  # type: ignore[assignment]

    @classmethod
    def for_parsed_handshake(cls, http: HttpToolsProtocol) -> WebSocketsSansIODirectProtocol:
        """The protocol for a handshake `http` parsed, already on its transport.

        uvicorn's constructor and `connection_made`, without what `open_parsed` replaces:
        a `ServerProtocol` waiting for the request, an `asyncio.Queue` and `Event`, and
        the addresses the HTTP protocol already looked up (about a tenth of the CPU a
        WebSocket costs to open). The attributes are uvicorn's own, all of them
        (tests/test_engine.py checks that connections behave as uvicorn's).
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
        # `queue`: set by `open_parsed`, the endpoint itself or a queue for the task
        self.writable = LightEvent(True)  # type: ignore[assignment]
        self.ping_interval = config.ws_ping_interval
        self.ping_timeout = config.ws_ping_timeout
        self.frames = []
        self.handshake_initiated = False
        self.handshake_complete = False
        self.close_sent = False
        self.disconnected = False
        self.close_timer = None
        self.read_paused = False
        self.handshake_key = None
        self.task_free = False
        self._conn = None  # built on first use: see `conn`
        # The rest of uvicorn's state starts as the class attributes above say.
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

    def open_parsed(
        self,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        key: bytes,
        forwarded: bool = True,
    ) -> None:
        """Start on a handshake the HTTP protocol parsed and `plain_handshake_key` checked:
        the scope uvicorn's `handle_connect` would build, without parsing it again.
        `forwarded=False`: it has no headers for the proxy-headers middleware."""
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
        if self._open_without_task(forwarded):
            return
        self.queue = LightQueue()  # type: ignore[assignment]
        self.queue.put_nowait({"type": "websocket.connect"})
        # uvicorn's run_asgi: the scope already has the extension, so without the
        # coroutine `run_asgi` below adds (it would stay suspended for the connection).
        task = self.loop.create_task(super().run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    def _open_without_task(self, forwarded: bool) -> bool:
        """Let an app that can (wspush's own) accept the connection without a task.

        An idle WebSocket then costs no task and no suspended coroutines, and opening
        it no trip through the ASGI call chain. The app gets the scope its proxy-headers
        middleware would pass on.
        """
        scope: Any = self.scope
        writer = scope["extensions"][DIRECT_WRITE]["writer"]
        endpoint, self.app = open_without_task(
            self.app, "open_websocket_now", scope, writer, forwarded
        )
        if endpoint is None:
            return False  # and the task calls `self.app`, past any proxy-headers middleware
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
