"""Request heads of any size get a definite answer within a second: served as the Go
program serves them up to `--max-request-head` (64 KiB by default), 431 with the CORS
header past it; and what a client sends in its head never costs the relay more memory
than the limit."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clients import UPGRADE_HEADERS, raw_request
from tests.conftest import SERVERS, RedisServer, Wspush, free_port, status_kb

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024
LONG = 10_000  # the ~10 kB request lines a long query or token makes
ONE_MIB_HEADER = b"X-Filler: " + b"a" * MIB + b"\r\n"
SUBPROTOCOL = b"Sec-WebSocket-Protocol: chat\r\n"  # takes uvicorn's handshake path


@pytest.fixture(params=SERVERS)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def relay_on(spawn_on: Callable[..., Wspush], redis_server: RedisServer, engine: str) -> Wspush:
    return spawn_on(engine, redis=redis_server.address)


# -- long request lines: answered as Go answers them ------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "token=abc&x=" + "a" * LONG,  # a long unrelated parameter
        "token=abc&" + "%41" * (LONG // 3),  # a query of escapes
        "x=" + "a" * LONG + "&token=abc",
    ],
    ids=["long-parameter", "escapes", "parameter-first"],
)
@pytest.mark.parametrize("extra", [b"", SUBPROTOCOL], ids=["plain", "subprotocol"])
def test_a_long_request_line_is_upgraded_normally(
    relay_on: Wspush, query: str, extra: bytes
) -> None:
    answer = raw_request(relay_on.port, f"/?{query}", extra, websocket=True)
    assert answer.status == 101


@pytest.mark.parametrize("extra", [b"", SUBPROTOCOL], ids=["plain", "subprotocol"])
def test_a_long_token_is_refused_with_400_and_cors_on_websocket_and_sse(
    relay_on: Wspush, extra: bytes
) -> None:
    websocket = raw_request(relay_on.port, "/?token=" + "t" * LONG, extra, websocket=True)
    assert websocket.status == 400
    assert websocket.headers["access-control-allow-origin"] == "*"
    assert websocket.closed
    sse = raw_request(relay_on.port, "/sse?token=" + "t" * LONG)
    assert (sse.status, sse.headers["access-control-allow-origin"]) == (400, "*")


def test_a_long_query_on_sse_is_streamed(relay_on: Wspush) -> None:
    answer = raw_request(relay_on.port, "/sse?token=abc&x=" + "a" * LONG)
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/event-stream")


def test_many_headers_within_the_limit_are_served(relay_on: Wspush) -> None:
    """200 small headers: more than websockets' own parser takes (128), well inside
    the head limit, so served as Go serves them."""
    many = b"".join(b"X-Header-%d: value\r\n" % n for n in range(200))
    assert raw_request(relay_on.port, "/?token=abc", many, websocket=True).status == 101
    assert raw_request(relay_on.port, "/sse?token=abc", many).status == 200


def test_a_handshake_websockets_cannot_parse_is_closed_at_once_by_wspush(
    spawn_on: Callable[..., Wspush], redis_server: RedisServer
) -> None:
    """A subprotocol sends a handshake through uvicorn to websockets, which refuses a
    request body; uvicorn never sends that refusal (a stock uvicorn hangs here, see
    docs/faults.md), wspush's protocol closes the connection."""
    server = spawn_on("wspush", redis=redis_server.address)
    extra = SUBPROTOCOL + b"Content-Length: 5\r\n"
    answer = raw_request(server.port, "/?token=abc", extra, websocket=True)
    assert (answer.status, answer.closed) == (0, True)


# -- heads over the limit: 431 with CORS, counted --------------------------------------


@pytest.mark.parametrize(
    ("target", "extra", "websocket"),
    [
        ("/sse?token=abc", ONE_MIB_HEADER, False),
        ("/?token=abc", ONE_MIB_HEADER, True),
        ("/?token=abc", ONE_MIB_HEADER + SUBPROTOCOL, True),
        ("/?token=abc&x=" + "a" * MIB, b"", True),  # a 1 MiB request line
        ("/?token=abc", b"X-Small: a\r\n" * 8000, True),  # many short header lines
    ],
    ids=["sse", "websocket", "websocket-subprotocol", "request-line", "many-lines"],
)
def test_a_head_over_the_limit_gets_431_with_cors_and_a_close(
    relay_on: Wspush, target: str, extra: bytes, websocket: bool
) -> None:
    answer = raw_request(relay_on.port, target, extra, websocket=websocket)
    assert answer.status == 431
    assert answer.headers["access-control-allow-origin"] == "*"
    assert answer.body == b"request head larger than 65536 bytes\n"
    assert answer.closed


def test_each_request_on_a_kept_alive_connection_has_the_limit(relay_on: Wspush) -> None:
    with socket.create_connection(("127.0.0.1", relay_on.port), timeout=1) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /sse?token=abc HTTP/1.1\r\nHost: x\r\n" + ONE_MIB_HEADER + b"\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_the_limit_is_a_setting_and_a_431_is_a_counted_refusal(
    spawn_on: Callable[..., Wspush], redis_server: RedisServer, engine: str
) -> None:
    expvar = free_port()
    server = spawn_on(
        engine,
        redis=redis_server.address,
        expvar=f"127.0.0.1:{expvar}",
        max_request_head="2048",
        cors_origins="https://a.example",
    )
    origin = b"Origin: https://a.example\r\n"
    fits = origin + b"X-Filler: " + b"a" * 1500 + b"\r\n"
    assert raw_request(server.port, "/?token=abc", fits, websocket=True).status == 101
    assert raw_request(server.port, "/sse?token=abc", fits).status == 200
    too_long = origin + b"X-Filler: " + b"a" * 3000 + b"\r\n"
    for websocket in (True, False):
        answer = raw_request(server.port, "/sse?token=abc", too_long, websocket=websocket)
        assert answer.status == 431
        assert answer.headers["access-control-allow-origin"] == "https://a.example"
        assert answer.body == b"request head larger than 2048 bytes\n"
    counters = httpx.get(f"http://127.0.0.1:{expvar}/debug/vars", timeout=5).json()["wspush"]
    assert counters["refused_request_head"] == 2
    assert counters["sessions_seen"] == 4  # refused ones included, on every path
    metrics = httpx.get(f"http://127.0.0.1:{expvar}/metrics", timeout=5).text
    assert 'wspush_connections_refused_total{reason="request_head"} 2.0' in metrics
    assert re.search(r"refused \w+ /sse from 127\.0\.0\.1: 431 request head larger", server.log())


@pytest.mark.parametrize("given", ["flag", "dotenv"])
def test_max_request_head_comes_from_a_flag_or_a_dotenv_file(
    spawn: Callable[..., Wspush], redis_server: RedisServer, tmp_path: Path, given: str
) -> None:
    if given == "dotenv":
        (tmp_path / ".env").write_text("WSPUSH_MAX_REQUEST_HEAD=2048\n")
        server = spawn("-redis", redis_server.address)
    else:
        server = spawn("-redis", redis_server.address, "--max-request-head", "2048")
    fits, too_long = (b"X-Filler: " + b"a" * size + b"\r\n" for size in (1500, 3000))
    assert raw_request(server.port, "/sse?token=abc", fits).status == 200
    assert raw_request(server.port, "/sse?token=abc", too_long).status == 431


# -- memory: bounded by the limit, not by what clients send -----------------------------


async def test_200_clients_sending_1_mib_heads_cost_far_less_than_200_mib(
    spawn_on: Callable[..., Wspush], redis_server: RedisServer
) -> None:
    """Each client sends a head that never ends: 1 MiB of one header line, all at once.
    The relay holds at most the limit of each while reading it, then refuses it."""
    server = spawn_on("wspush", redis=redis_server.address)
    assert server.process is not None
    clients, size = 200, MIB
    peak_before = status_kb(server.process.pid, "VmHWM")

    async def send_endless_head(upgrade: bool) -> tuple[asyncio.StreamReader, Any]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /sse?token=abc HTTP/1.1\r\nHost: x\r\n")
        writer.write((UPGRADE_HEADERS if upgrade else b"") + b"X-Filler: " + b"a" * size)
        await writer.drain()
        return reader, writer

    async with asyncio.timeout(30):
        connections = await asyncio.gather(*(send_endless_head(n % 2 == 0) for n in range(clients)))
    await asyncio.sleep(0.5)  # for the relay to read what is still in its socket buffers
    growth_kb = status_kb(server.process.pid, "VmHWM") - peak_before
    sent_kb = clients * size // 1024
    assert growth_kb < sent_kb / 8, f"peak RSS grew {growth_kb} kB for {sent_kb} kB sent"
    try:
        async with asyncio.timeout(5):
            answers = [await reader.read() for reader, _ in connections]  # up to the close
    finally:
        for _, writer in connections:
            writer.close()
    assert all(answer.startswith(b"HTTP/1.1 431 ") for answer in answers)
    assert server.status("/ping") == 200
