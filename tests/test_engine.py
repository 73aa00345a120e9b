"""The engine (wspush.engine) and what keeps connections cheap: the handshake wspush
answers itself, the short path past Starlette, and the lightweight event and queue. Each
must behave exactly like what it replaces, and the engine like a stock uvicorn: the
tests under "as stock uvicorn does" run both servers and compare what clients see."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from tests.clients import RawWebSocket, SSEClient, receive, websocket
from tests.conftest import SERVERS, RedisServer, Wspush, free_port, wait_until
from tests.test_factory import ready, served
from wspush import Settings, create_app
from wspush.engine.handshake import plain_handshake_key
from wspush.engine.heads import HeadRecorder, ResponseHeads
from wspush.engine.http import ACCESS_LOGGER, ERROR_LOGGER, LightFlowControl
from wspush.engine.proxy import apply_proxy_headers
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
    with uvicorn_in_thread(create_app(settings), settings) as served:
        yield served


@contextlib.contextmanager
def uvicorn_in_thread(
    app: ASGIApp, settings: Settings, **options: object
) -> Iterator[tuple[uvicorn.Server, int]]:
    """`app` under uvicorn with wspush's options for `settings` (and `options`), in a
    thread."""
    port = free_port()
    config = {**uvicorn_options(settings), "port": port, "log_config": None, **options}
    server = uvicorn.Server(uvicorn.Config(app, **config))  # type: ignore[arg-type]
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
    # Size is not websockets' business here (the HTTP protocol bounds the head).
    long_target = b"/?token=a&x=" + b"a" * 10_000
    assert plain_handshake_key("GET", "1.1", long_target, PLAIN) == KEY
    assert plain_handshake_key("GET", "1.1", b"/", [*PLAIN, *[(b"x-filler", b"1")] * 200]) == KEY

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


# -- as stock uvicorn does -------------------------------------------------------------


@contextlib.contextmanager
def both_servers(
    workdir: Path, redis_server: RedisServer, *args: str
) -> Iterator[dict[str, Wspush]]:
    """The same relay on wspush's engine and on a stock uvicorn, side by side."""
    relays = {
        server: Wspush(workdir / server, "-redis", redis_server.address, *args, server=server)
        for server in SERVERS
    }
    try:
        yield {server: relay.start() for server, relay in relays.items()}
    finally:
        for relay in relays.values():
            with contextlib.suppress(Exception):
                relay.stop()


async def exchange(port: int, request: bytes, then: Callable[[], object] | None = None) -> bytes:
    """Send a raw request; return what comes back until `then` (called once the head is
    in) has had its effect and the server has sent nothing more for a moment, or EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        received = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        if then is not None:
            then()
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.5)
            except TimeoutError:
                return received
            if not chunk:
                return received + b"<EOF>"
            received += chunk
    finally:
        writer.close()


def sse_request(token: str, version: str = "1.1", *headers: str) -> bytes:
    lines = [f"GET /sse?token={token} HTTP/{version}", "Host: x", *headers, "", ""]
    return "\r\n".join(lines).encode()


@pytest.mark.parametrize(
    ("version", "headers"),
    [
        ("1.1", ()),
        ("1.0", ()),  # no chunked framing, and the connection ends with the stream
        ("1.1", ("Connection: close",)),
        ("1.1", ("Origin: https://a.example",)),  # echoed
        ("1.1", ("Origin: https://b.example",)),  # not listed: no echo
    ],
)
async def test_sse_heads_and_bodies_are_stock_uvicorns(
    tmp_path: Path,
    redis_server: RedisServer,
    token: str,
    version: str,
    headers: tuple[str, ...],
) -> None:
    """Head, framing and end of an SSE stream, byte for byte (but the date), for each
    HTTP version, `Connection: close`, and heads with and without an echoed origin."""
    args = ("--cors-origins", "https://a.example")
    with both_servers(tmp_path, redis_server, *args) as relays:
        seen = {}
        request = sse_request(token, version, *headers)
        publish = functools.partial(redis_server.publish, f"example.{token}", f"on {version}")
        for server, relay in relays.items():
            seen[server] = without_date(await exchange(relay.port, request, publish))
        assert f"data:on {version}".encode() in seen["wspush"]
        assert seen["wspush"] == seen["uvicorn"]


async def test_a_client_close_gets_the_same_answer(
    tmp_path: Path, redis_server: RedisServer, token: str
) -> None:
    """The client closes: the server answers with the same close frame and ends the
    connection, on both servers."""
    with both_servers(tmp_path, redis_server) as relays:
        answers = {}
        for server, relay in relays.items():
            raw = await RawWebSocket.open(relay.port, f"/?token={token}")
            raw.send(0x8, struct.pack("!H", 1000) + b"bye")
            answers[server] = (*await raw.frame(), await connection_end(raw))
            raw.close()
        assert answers["wspush"] == answers["uvicorn"], answers
        assert answers["wspush"][:2] == (0x8, struct.pack("!H", 1000) + b"bye")


async def test_a_server_close_is_answered_and_ends_the_connection_alike(
    tmp_path: Path, redis_server: RedisServer, token: str
) -> None:
    """The server closes (1009 for an oversized frame): the same close frame, and once
    the client answers it, the end of the connection, on both servers."""
    with both_servers(tmp_path, redis_server, "--max-client-message", "125") as relays:
        closes = {}
        for server, relay in relays.items():
            raw = await RawWebSocket.open(relay.port, f"/?token={token}")
            raw.send(0x2, b"x" * 126)
            close = await raw.frame()
            raw.send(0x8, close[1][:2])  # the client's answer
            closes[server] = (*close, await connection_end(raw))
            raw.close()
        assert closes["wspush"] == closes["uvicorn"], closes
        assert closes["wspush"][0] == 0x8
        assert closes["wspush"][1][:2] == struct.pack("!H", 1009)


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_a_reader_that_pauses_then_reads_again_gets_what_it_kept_in_order(
    tmp_path: Path, redis_server: RedisServer, token: str, transport: str
) -> None:
    """A client stops reading while 8 MiB are published: the server stops writing to it
    and queues or drops, never reorders; once it reads again, it gets an increasing
    run of messages and then what is published after, on both servers."""
    big = b"x" * (64 * 1024)
    with both_servers(tmp_path, redis_server) as relays:
        for server, relay in relays.items():
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            if transport == "ws":
                raw = RawWebSocket(reader, writer)
                raw.writer.write(websocket_request(relay.port, f"/?token={token}"))
            else:
                writer.write(sse_request(token))
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            for seq in range(128):  # not read meanwhile
                redis_server.publish(f"example.{token}", b"%d " % seq + big)
            await asyncio.sleep(0.5)
            redis_server.publish(f"example.{token}", b"end")
            seen = await read_sequence(reader, transport)
            assert seen, server
            assert seen == sorted(set(seen)), (server, seen)
            writer.close()


async def connection_end(raw: RawWebSocket) -> str:
    """That the server ends the connection after its close frame, within 5 s (with a FIN,
    or a reset when the client's answer arrives after it closed: a matter of timing)."""
    try:
        rest = await asyncio.wait_for(raw.reader.read(), 5)
    except ConnectionResetError:
        return "ended"
    assert rest == b"", rest
    return "ended"


def websocket_request(port: int, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def read_sequence(reader: asyncio.StreamReader, transport: str) -> list[int]:
    """The sequence numbers of the messages read until `end`."""
    seen: list[int] = []
    async with asyncio.timeout(20):
        if transport == "ws":
            raw = RawWebSocket(reader, None)  # type: ignore[arg-type]
            while True:
                opcode, payload = await raw.frame(timeout=20)
                if payload == b"end":
                    return seen
                if opcode == 0x2:
                    seen.append(int(payload.split(b" ", 1)[0]))
        buffer = b""
        while b"data:end\n\n" not in buffer:
            chunk = await reader.read(1 << 20)
            assert chunk, "the stream ended"
            buffer += chunk
        return [int(n) for n in re.findall(rb"data:(\d+) ", buffer)]
