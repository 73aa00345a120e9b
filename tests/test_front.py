"""The protocol every connection starts on (wspush.engine.front): a stream opened from
the first head, and everything else answered exactly as before, by the HTTP protocol it
hands the connection to; after a stream, the connection goes on there."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from tests.clients import RawWebSocket, SSEClient
from tests.conftest import RedisServer, wait_until
from tests.test_engine import (
    both_servers,
    exchange,
    uvicorn_in_thread,
    without_date,
    wspush_server,
)
from tests.test_factory import ready
from wspush import Settings
from wspush.engine.front import HTTP_SCOPE_KEYS, FrontProtocol
from wspush.engine.http import HttpToolsDirectProtocol
from wspush.engine.websocket import WebSocketsSansIODirectProtocol

pytestmark = pytest.mark.anyio


def protocols_of(server: uvicorn.Server) -> list[type]:
    return [type(connection) for connection in list(server.server_state.connections)]


async def read_until(reader: asyncio.StreamReader, marker: bytes, seen: bytes = b"") -> bytes:
    while marker not in seen:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, f"the connection ended before {marker!r}: {seen!r}"
        seen += chunk
    return seen


# -- what it opens itself --------------------------------------------------------------


async def test_an_sse_stream_opens_on_the_front_protocol_even_from_a_head_in_pieces(
    redis_server: RedisServer, token: str
) -> None:
    """A head that arrives in three reads still opens at once: no task, the connection
    kept by the front protocol, and messages flow."""
    with wspush_server(Settings(redis=redis_server.address)) as (server, port):
        assert ready(f"127.0.0.1:{port}")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            head = f"GET /sse?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            for piece in (head[:7], head[7:20], head[20:]):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.05)
            received = await read_until(reader, b"\r\n\r\n")
            assert received.startswith(b"HTTP/1.1 200 OK\r\n")
            assert FrontProtocol in protocols_of(server)
            assert not server.server_state.tasks
            redis_server.publish(f"example.{token}", "in pieces")
            await read_until(reader, b"data:in pieces\n\n", received)
        finally:
            writer.close()


async def test_a_refusal_it_asked_the_app_for_is_counted_once(
    redis_server: RedisServer, token: str
) -> None:
    """A bad token on SSE: the app refuses on the front protocol, which hands the
    connection over with that verdict; one session, one refusal, and the 400."""
    with wspush_server(Settings(redis=redis_server.address)) as (server, port):
        assert ready(f"127.0.0.1:{port}")
        stats = server.config.loaded_app.app.state.relay.stats
        seen_before = stats.sessions_seen
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /sse?token=a%zzb HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await read_until(reader, b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 ")
        finally:
            writer.close()
        assert stats.refused_bad_token == 1
        assert stats.sessions_seen == seen_before + 1


async def test_after_a_stream_ends_its_connection_serves_the_request_that_waited(
    redis_server: RedisServer, token: str
) -> None:
    """The relay ends an SSE stream on a keep-alive connection: the end of the body, then
    the request the client sent meanwhile is answered, by the HTTP protocol the
    connection has gone on to, and the server counts both requests."""
    with wspush_server(Settings(redis=redis_server.address)) as (server, port):
        assert ready(f"127.0.0.1:{port}")
        relay = server.config.loaded_app.app.state.relay
        requests_before = server.server_state.total_requests
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET /sse?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            received = await read_until(reader, b"\r\n\r\n")
            writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")  # waits for the stream
            await writer.drain()
            await asyncio.sleep(0.2)
            assert b"pong" not in received
            (subscription,) = list(relay.hub.subscriptions())
            (connection,) = list(server.server_state.connections)
            connection.loop.call_soon_threadsafe(subscription.close)
            received = await read_until(reader, b"\r\n0\r\n\r\nHTTP/1.1 200 OK", received)
            pong = await read_until(reader, b"\r\n\r\n", received.split(b"0\r\n\r\n")[1])
            assert b"content-length: 0\r\n" in pong  # /ping's answer
        finally:
            writer.close()
        wait_until(lambda: protocols_of(server) == [], 5, "the connection to close")
        assert server.server_state.total_requests == requests_before + 2


# -- what it hands over ----------------------------------------------------------------


def first_requests(token: str) -> dict[str, bytes]:
    sse = f"GET /sse?token={token} HTTP/1.1\r\nHost: x\r\n"
    return {
        "a body": f"POST /sse?token={token} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
        "HTTP/1.0": "GET /ping HTTP/1.0\r\n\r\n",
        "pipelined": "GET /ping HTTP/1.1\r\nHost: x\r\n\r\n" * 2,
        "another path": "GET /ready HTTP/1.1\r\nHost: x\r\n\r\n",
        "a malformed header": f"{sse}Host x\r\n\r\n",
        "a bad token": "GET /sse?token=a%zzb HTTP/1.1\r\nHost: x\r\n\r\n",
        "Expect": f"{sse}Expect: 100-continue\r\n\r\n",
        "another upgrade": "GET /?token=a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        "Upgrade: h2c\r\n\r\n",
        "Connection: close": f"{sse}Connection: close\r\n\r\n",
        "close among options": f"{sse}Connection: keep-alive, Close\r\n\r\n",
        "a repeated header": f"{sse}Accept: text/event-stream\r\nAccept: */*\r\n\r\n",
        "a folded header": f"{sse}X-A: a\r\n b\r\n\r\n",
        "a long head": f"{sse}X-Pad: {'p' * 2000}\r\n\r\n",
    }  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [
        "a body",
        "HTTP/1.0",
        "pipelined",
        "another path",
        "a malformed header",
        "a bad token",
        "Expect",
        "another upgrade",
        "Connection: close",
        "close among options",
        "a repeated header",
        "a folded header",
        "a long head",
    ],
)
async def test_first_requests_it_does_not_open_are_answered_as_stock_uvicorn_answers(
    tmp_path: Path, redis_server: RedisServer, token: str, case: str
) -> None:
    """Byte for byte (but the date), the same answer on wspush's engine and on a stock
    uvicorn, for every kind of first request the front protocol hands over."""
    request = first_requests(token)[case].encode()
    with both_servers(tmp_path, redis_server, "--max-request-head", "1024") as relays:
        seen = {
            server: without_date(await exchange(relay.port, request))
            for server, relay in relays.items()
        }
    assert seen["wspush"] == seen["uvicorn"], seen
    assert seen["wspush"].startswith(b"HTTP/1.")


class RecordingApp:
    """An app with the engine's `open_sse_now`, declining every stream: it records the
    scope each protocol gives it, then answers 200 through ASGI."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    def open_sse_now(self, scope: Scope, writer: object) -> None:
        self.scopes.append(dict(scope))
        scope.setdefault("carried", len(self.scopes))  # to the next protocol's scope
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            await send({"type": "lifespan.shutdown.complete"})
            return
        await PlainTextResponse(f"carried {scope.get('carried')}")(scope, receive, send)


@contextlib.contextmanager
def recording_server(root_path: str) -> Iterator[tuple[RecordingApp, int]]:
    app = RecordingApp()
    served = uvicorn_in_thread(app, Settings(), root_path=root_path, lifespan="off")  # type: ignore[arg-type]
    with served as (_, port):
        yield app, port


ODD_HEADERS = (
    "Accept: */*\r\nX-Spaces:   padded \t \r\nX-Empty:\r\nX-Colons: a:b: c\r\n"
    "X-Tab:\ta\tb\r\nMiXeD-CaSe: Value\r\n"
)


@pytest.mark.parametrize("root_path", ["", "/push"])
@pytest.mark.parametrize("target", ["/sse?token=a", "/a%2Fb/sse?x=%20&token=b", "/"])
@pytest.mark.parametrize("headers", ["Accept: */*\r\n", ODD_HEADERS])
async def test_the_scope_it_builds_is_the_one_uvicorns_protocol_builds(
    root_path: str, target: str, headers: str
) -> None:
    """The app gets the same scope from the front protocol as from the HTTP protocol it
    hands the declined request to (but the direct writer each offers), headers and all,
    and what the app added to the first is in the second."""
    with recording_server(root_path) as (app, port):
        request = f"GET {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()
        answer = await exchange(port, request)
        assert answer.endswith(b"carried 1"), answer
    front, handed_over = app.scopes
    assert "carried" not in front
    assert set(front) == HTTP_SCOPE_KEYS  # what it carries over is the rest
    assert handed_over.pop("carried") == 1
    for scope in (front, handed_over):
        assert set(scope.pop("extensions")) == {
            "wspush.direct_write",
            "wspush.request_head_limited",
        }
    assert front == handed_over


async def test_server_exit_closes_a_connection_that_has_sent_nothing(
    redis_server: RedisServer,
) -> None:
    """uvicorn's shutdown closes the connections it keeps: one that never sent a byte is
    the front protocol's, and is closed."""
    with wspush_server(Settings(redis=redis_server.address)) as (server, port):
        assert ready(f"127.0.0.1:{port}")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        wait_until(lambda: FrontProtocol in protocols_of(server), 5, "the connection")
        server.should_exit = True
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_an_sse_client_is_served_by_the_protocol_it_started_on(
    redis_server: RedisServer, token: str
) -> None:
    """While a stream is open, the connection stays the front protocol's; a /ping on
    another connection is the HTTP protocol's."""
    with wspush_server(Settings(redis=redis_server.address)) as (server, port):
        assert ready(f"127.0.0.1:{port}")
        async with SSEClient(f"http://127.0.0.1:{port}/sse?token={token}") as sse:
            assert sse.response is not None
            assert protocols_of(server).count(FrontProtocol) == 1
            assert HttpToolsDirectProtocol not in protocols_of(server)


async def test_a_websocket_it_opens_stays_on_its_transport_and_passes_everything_on(
    redis_server: RedisServer, token: str
) -> None:
    """The front protocol stays the transport's protocol (uvloop's `set_protocol` would
    restart reading): the WebSocket protocol it opened gets every event through it, so
    pings are answered, messages delivered, and the client's close is seen at once."""
    with wspush_server(Settings(redis=redis_server.address)) as (server, port):
        assert ready(f"127.0.0.1:{port}")
        ws = await RawWebSocket.open(port, f"/?token={token}")
        try:
            (opened,) = [
                connection
                for connection in list(server.server_state.connections)
                if isinstance(connection, WebSocketsSansIODirectProtocol)
            ]
            front = opened.transport.get_protocol()
            assert isinstance(front, FrontProtocol)
            assert front.successor is opened
            assert FrontProtocol not in protocols_of(server)  # shutdown closes it as a WebSocket

            ws.send(0x9, b"are you there")
            assert await ws.frame() == (0xA, b"are you there")
            assert redis_server.publish(f"example.{token}", "hello") >= 1  # other tests' relays
            assert await ws.frame() == (0x2, b"hello")

            ws.send(0x8, (1000).to_bytes(2, "big"))
            assert await ws.frame() == (0x8, (1000).to_bytes(2, "big"))
            wait_until(lambda: opened not in server.server_state.connections, 5, "the close")
        finally:
            ws.close()
