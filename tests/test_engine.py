"""What keeps connections cheap: the handshake wspush answers itself, the short path
past Starlette, and the lightweight event and queue. Each must behave exactly like what
it replaces."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState
from websockets.protocol import OPEN

from tests.clients import SSEClient, receive, websocket
from tests.conftest import RedisServer, Wspush, free_port, wait_until
from tests.test_factory import ready, served
from wspush import Settings, create_app
from wspush.engine.handshake import plain_handshake_key
from wspush.engine.heads import HeadRecorder, ResponseHeads
from wspush.engine.http import (
    ACCESS_LOGGER,
    ERROR_LOGGER,
    HttpToolsDirectProtocol,
    LightFlowControl,
)
from wspush.engine.proxy import apply_proxy_headers
from wspush.engine.websocket import WebSocketsSansIODirectProtocol
from wspush.lightweight import LightEvent, LightQueue
from wspush.serving import uvicorn_options

pytestmark = pytest.mark.anyio

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
PLAIN = [
    (b"host", b"x"),
    (b"upgrade", b"websocket"),
    (b"connection", b"keep-alive, Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
    (b"origin", b"http://x"),
    (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
]


def raw_handshake(port: int, target: str, extra: bytes = b"") -> bytes:
    """Send a handshake over a plain socket and return the response head."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
            + KEY
            + b"\r\nSec-WebSocket-Version: 13\r\n"
            + extra
            + b"\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        return head


def without_date(head: bytes) -> bytes:
    return re.sub(rb"\r\ndate: [^\r]*", b"", head)


# -- the handshake ---------------------------------------------------------------------


def test_a_plain_handshake_gets_the_same_101_as_uvicorns_path(relay: Wspush, token: str) -> None:
    own = raw_handshake(relay.port, f"/?token={token}")
    # Asking for a subprotocol sends the handshake through uvicorn and websockets.
    theirs = raw_handshake(relay.port, f"/?token={token}", b"Sec-WebSocket-Protocol: chat\r\n")
    assert own.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\ndate: " in own
    assert without_date(own) == without_date(theirs)


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (b"Sec-WebSocket-Key: again\r\n", b"400"),
        (b"Sec-WebSocket-Version: 8\r\n", b"400"),
    ],
)
def test_handshakes_it_does_not_answer_get_uvicorns_answers(
    relay: Wspush, token: str, extra: bytes, status: bytes
) -> None:
    head = raw_handshake(relay.port, f"/?token={token}", extra)
    assert head.startswith(b"HTTP/1.1 " + status)


async def test_refusals_and_messages_on_a_parsed_handshake(
    relay: Wspush, redis_server: RedisServer, token: str
) -> None:
    head = raw_handshake(relay.port, "/?token=")
    assert head.startswith(b"HTTP/1.1 400 ")
    async with websocket(relay.ws_url(token)) as ws:
        redis_server.publish(f"example.{token}", "parsed")
        assert await receive(ws) == b"parsed"


class SocketTransport(asyncio.Transport):
    """A transport on a connected socket pair, enough for the protocols' constructors."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {
            "socket": self.sock,
            "sockname": self.sock.getsockname(),
            "peername": self.sock.getpeername(),
        }.get(name, default)


@contextlib.contextmanager
def server_connection() -> Iterator[tuple[uvicorn.Config, ServerState, SocketTransport, object]]:
    """wspush's uvicorn config and server state, and the server side of a real
    connection as a transport, with the client's address."""
    config = uvicorn.Config(create_app(Settings()), **uvicorn_options(Settings()))
    config.load()
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as client:
        server_side, _ = listener.accept()
        with server_side:
            yield config, ServerState(), SocketTransport(server_side), client.getsockname()


async def test_the_parsed_handshake_protocol_has_exactly_uvicorns_attributes() -> None:
    """`for_parsed_handshake` restates uvicorn's constructor: a uvicorn release that adds
    an attribute must show up here, not as an AttributeError on some connection."""
    with server_connection() as (config, state, transport, peer):
        theirs = WebSocketsSansIODirectProtocol(config=config, server_state=state, app_state={})
        theirs.connection_made(transport)
        http = HttpToolsDirectProtocol(config=config, server_state=state, app_state={})
        http.connection_made(transport)
        own = WebSocketsSansIODirectProtocol.for_parsed_handshake(http)
    assert set(vars(own)) == set(vars(theirs))
    assert own._conn is None
    assert own.conn.state is OPEN
    for name in ("server", "client", "scheme", "transport", "connections", "tasks"):
        assert getattr(own, name) == getattr(theirs, name), name
    assert own.client == peer
    assert type(own.queue) is type(theirs.queue) is LightQueue
    assert type(own.writable) is type(theirs.writable) is LightEvent
    assert own.writable.is_set()


async def test_the_http_protocol_has_exactly_uvicorns_attributes_and_addresses() -> None:
    """Its constructor and `connection_made` restate uvicorn's, without the logger
    look-ups and socket objects: same attributes, same addresses."""
    with server_connection() as (config, state, transport, peer):
        theirs = HttpToolsProtocol(config=config, server_state=state, app_state={})
        theirs.connection_made(transport)
        own = HttpToolsDirectProtocol(config=config, server_state=state, app_state={})
        own.connection_made(transport)
    assert set(vars(theirs)) <= set(vars(own))
    assert set(vars(own)) - set(vars(theirs)) == {"upgrade_of", "upgrading", "stream"}
    for name in ("server", "client", "scheme", "logger", "access_logger", "access_log"):
        assert getattr(own, name) == getattr(theirs, name), name
    assert own.client == peer
    assert own.flow.write_paused is False
    assert type(own.flow._is_writable_event) is LightEvent


def test_proxy_headers_are_applied_as_uvicorns_middleware_applies_them() -> None:
    """A WebSocket accepted without a task gets the scope uvicorn's middleware would
    have passed on: same client, same scheme, for trusted and untrusted peers."""
    middleware = ProxyHeadersMiddleware(app=None, trusted_hosts="127.0.0.1")  # type: ignore[arg-type]
    cases = [
        ("127.0.0.1", []),
        ("127.0.0.1", [(b"x-forwarded-for", b"203.0.113.7")]),
        ("127.0.0.1", [(b"x-forwarded-for", b"198.51.100.1, 203.0.113.7")]),
        ("127.0.0.1", [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-for", b"10.0.0.1")]),
        ("127.0.0.1", [(b"x-forwarded-proto", b"https"), (b"x-forwarded-for", b"")]),
        ("127.0.0.1", [(b"x-forwarded-proto", b"gopher")]),
        ("192.0.2.9", [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"https")]),
    ]
    seen: list[Scope] = []

    async def capture(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    middleware.app = capture
    for kind in ("websocket", "http"):
        for peer, headers in cases:
            scope = {"type": kind, "client": (peer, 5000), "scheme": "ws", "headers": headers}
            seen.clear()
            ours = dict(scope)
            apply_proxy_headers(middleware, ours)
            asyncio.run(middleware(dict(scope), None, None))  # type: ignore[arg-type]
            assert ours == seen[0], (kind, peer, headers)


@contextlib.contextmanager
def wspush_server(settings: Settings) -> Iterator[tuple[uvicorn.Server, int]]:
    """The app under uvicorn with wspush's options (its protocols), in a thread."""
    port = free_port()
    options = {**uvicorn_options(settings), "port": port, "log_config": None}
    server = uvicorn.Server(uvicorn.Config(create_app(settings), **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "uvicorn in a thread")
        yield server, port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive()


async def test_an_accepted_websocket_needs_no_task(redis_server: RedisServer, token: str) -> None:
    """wspush's protocols keep an accepted WebSocket without a task or coroutines; it
    still gets messages, and leaves the hub when it disconnects."""
    with wspush_server(Settings(redis=redis_server.address)) as (server, port):
        assert ready(f"127.0.0.1:{port}")
        stats = server.config.loaded_app.app.state.relay.stats
        async with websocket(f"ws://127.0.0.1:{port}/?token={token}") as ws:
            assert stats.connections_open_ws == 1
            assert not server.server_state.tasks
            redis_server.publish(f"example.{token}", "no task")
            assert await receive(ws) == b"no task"
        wait_until(lambda: stats.connections_open_ws == 0, 10, "the hub to forget it")


async def test_an_sse_stream_needs_no_task(redis_server: RedisServer, token: str) -> None:
    """Likewise an SSE stream: the same head (CORS included), messages, and the hub
    forgets it when the client leaves."""
    with wspush_server(Settings(redis=redis_server.address)) as (server, port):
        assert ready(f"127.0.0.1:{port}")
        stats = server.config.loaded_app.app.state.relay.stats
        async with SSEClient(f"http://127.0.0.1:{port}/sse?token={token}") as sse:
            assert sse.response is not None
            assert sse.response.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert sse.response.headers["access-control-allow-origin"] == "*"
            assert stats.connections_open_sse == 1
            assert not server.server_state.tasks
            redis_server.publish(f"example.{token}", "no task")
            await sse.wait_for(b"data:no task\n\n")
        wait_until(lambda: stats.connections_open_sse == 0, 10, "the hub to forget it")


def test_a_stream_head_is_written_as_uvicorns_send_writes_it() -> None:
    """The encoded-once head: same bytes and the same cycle state as uvicorn's `send`,
    for each HTTP version, an echoed origin, and after the Date changes."""
    heads = ResponseHeads()
    sse = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
    cases = [
        ("GET", True, sse),
        ("GET", True, sse),  # the second time from the cache
        ("GET", False, sse),  # HTTP/1.0: no keep-alive
        ("GET", True, [*sse, (b"access-control-allow-origin", b"https://a.example")]),
        ("GET", True, [*sse, (b"connection", b"close")]),
    ]
    for date in (b"Sun, 29 Nov 2026 03:00:00 GMT", b"Sun, 29 Nov 2026 03:00:01 GMT"):
        defaults = [(b"date", date)]
        for method, keep_alive, headers in cases:
            ours, theirs = (
                cycle_for(method, keep_alive, defaults),
                cycle_for(method, keep_alive, defaults),
            )
            heads.start(ours, 200, headers)
            message = {"type": "http.response.start", "status": 200, "headers": headers}
            asyncio.run(theirs.send(message))  # type: ignore[arg-type]
            assert ours.transport.written == theirs.transport.written  # type: ignore[attr-defined]
            for name in ("response_started", "chunked_encoding", "keep_alive"):
                assert getattr(ours, name) == getattr(theirs, name), name
            assert ours.waiting_for_100_continue is theirs.waiting_for_100_continue is False


def cycle_for(
    method: str, keep_alive: bool, defaults: list[tuple[bytes, bytes]]
) -> RequestResponseCycle:
    scope = {"type": "http", "method": method, "http_version": "1.1", "headers": []}
    return RequestResponseCycle(
        scope=scope,  # type: ignore[arg-type]
        transport=HeadRecorder(),  # type: ignore[arg-type]
        flow=LightFlowControl(None),  # type: ignore[arg-type]
        logger=ERROR_LOGGER,
        access_logger=ACCESS_LOGGER,
        access_log=False,
        default_headers=defaults,
        message_event=asyncio.Event(),
        expect_100_continue=True,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )


def test_only_handshakes_websockets_would_accept_as_they_are_count_as_plain() -> None:
    assert plain_handshake_key("GET", "1.1", b"/?token=a", PLAIN) == KEY

    def variant(name: bytes, value: bytes | None) -> list[tuple[bytes, bytes]]:
        headers = [(n, v) for n, v in PLAIN if n != name]
        return headers if value is None else [*headers, (name, value)]

    refused = [
        variant(b"sec-websocket-key", None),
        variant(b"sec-websocket-key", b"c2hvcnQ="),  # 5 bytes, not 16
        variant(b"sec-websocket-key", b"not base64!!"),
        [*PLAIN, (b"sec-websocket-key", KEY)],  # twice
        variant(b"sec-websocket-version", b"8"),
        variant(b"upgrade", b"h2c"),
        variant(b"connection", b"keep-alive"),
        variant(b"connection", b"up grade"),
        [*PLAIN, (b"origin", b"http://y")],
        [*PLAIN, (b"sec-websocket-protocol", b"chat")],
        [*PLAIN, *[(b"x-filler", b"1")] * 100],
    ]
    for headers in refused:
        assert plain_handshake_key("GET", "1.1", b"/", headers) is None, headers
    assert plain_handshake_key("POST", "1.1", b"/", PLAIN) is None
    assert plain_handshake_key("GET", "1.0", b"/", PLAIN) is None
    assert plain_handshake_key("GET", "1.1", "/é".encode(), PLAIN) is None


# -- the short path --------------------------------------------------------------------


class Stamp:
    """A middleware of someone else's: it must see every response, streams included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-stamp", b"1")]
            await send(message)

        await self.app(scope, receive, stamped)


async def test_streams_pass_middleware_someone_added(redis_server: RedisServer, token: str) -> None:
    app = create_app(Settings(redis=redis_server.address))
    app.user_middleware.insert(0, Middleware(Stamp))
    with served(app) as base:
        assert ready(base)
        async with SSEClient(f"http://{base}/sse?token={token}") as sse:
            assert sse.response is not None
            assert sse.response.headers["x-stamp"] == "1"
            assert sse.response.headers["access-control-allow-origin"] == "*"
            redis_server.publish(f"example.{token}", "stamped")
            await sse.wait_for(b"data:stamped\n\n")


async def test_the_short_path_keeps_cors_and_the_plain_500(
    redis_server: RedisServer, token: str
) -> None:
    app = create_app(Settings(redis=redis_server.address))
    with served(app) as base:
        assert ready(base)
        async with SSEClient(f"http://{base}/sse?token={token}") as sse:
            assert sse.response is not None
            assert sse.response.headers["access-control-allow-origin"] == "*"
            assert sse.response.headers["content-type"] == "text/event-stream; charset=utf-8"
        refused = httpx.get(f"http://{base}/sse?token=", timeout=5)
        assert refused.status_code == 400
        assert refused.headers["access-control-allow-origin"] == "*"

        def broken(request: object) -> None:
            raise RuntimeError("broken on purpose")

        app.endpoints.http = broken  # type: ignore[attr-defined]
        answer = httpx.get(f"http://{base}/sse?token={token}", timeout=5)
        assert answer.status_code == 500
        assert answer.text == "Internal Server Error"


# -- the lightweight event and queue ---------------------------------------------------


async def test_the_light_event_wakes_every_waiter_and_survives_cancellation() -> None:
    event = LightEvent()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    cancelled = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    event.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 5) == [True, True, True]
    assert cancelled.cancelled()
    event.clear()
    assert not event.is_set()
    late = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not late.done()
    event.set()
    assert await asyncio.wait_for(late, 5)


async def test_the_light_queue_is_a_bounded_fifo_like_asyncio_queue() -> None:
    queue: LightQueue[int] = LightQueue(2)
    assert queue.empty()
    assert not queue.full()
    queue.put_nowait(1)
    queue.put_nowait(2)
    assert queue.full()
    assert queue.qsize() == 2
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(3)
    assert [queue.get_nowait(), await queue.get()] == [1, 2]
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(10)
    first.cancel()  # woken for 10, then cancelled: 10 must go to the other getter
    assert await asyncio.wait_for(second, 5) == 10
    assert first.cancelled()
    unbounded: LightQueue[int] = LightQueue()
    for item in range(1000):
        unbounded.put_nowait(item)
    assert not unbounded.full()
    assert [unbounded.get_nowait() for _ in range(1000)] == list(range(1000))
