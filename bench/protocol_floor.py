"""The least a Python server on uvloop and httptools does to open a stream: a measuring
stick for `bench/setup_cost.py` and the harness's `setup-10k`, not a relay.

It answers `/ping`, and any other request with either the 101 of a WebSocket handshake
or an SSE response head, then keeps the connection, delivering nothing. What wspush
spends per connection beyond this is its own: scope, admission, hub, stream objects.

    python bench/setup_cost.py --label floor --cmd "$PWD/.venv/bin/python bench/protocol_floor.py"

It takes the Go-style flags the measuring tools pass (`-addr HOST:PORT`; `-redis` and
`-prefix` are ignored), and `-delay-us N`: spin N µs of CPU before each answer, a floor
as slow as a server doing N µs more work per connection (`bench/setup_split.py`
compares where the kernel's share goes then).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import time

import httptools
import uvloop

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-store\r\nx-accel-buffering: no\r\ntransfer-encoding: chunked\r\n\r\n"
)
PONG = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class FloorProtocol(asyncio.Protocol):
    """One connection: parse the head, answer it, keep the connection."""

    def __init__(self, streams: set[FloorProtocol], delay: float = 0.0) -> None:
        self.streams = streams
        self.delay = delay
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = None
        self.url = b""
        self.key: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        if self.parser is None:
            return  # a stream: what the client sends is dropped
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.answer()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"sec-websocket-key":
            self.key = value

    def on_headers_complete(self) -> None:
        if self.key is None:
            self.answer()

    def answer(self) -> None:
        transport = self.transport
        assert transport is not None
        if self.delay:
            busy_until = time.perf_counter() + self.delay
            while time.perf_counter() < busy_until:
                pass
        if self.url == b"/ping":
            transport.write(PONG)
            return
        if self.key is not None:
            accept = base64.b64encode(hashlib.sha1(self.key + GUID).digest())
            transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
        else:
            transport.write(SSE_HEAD)
        self.parser = None
        self.streams.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.streams.discard(self)


async def serve(host: str, port: int, delay: float) -> None:
    streams: set[FloorProtocol] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: FloorProtocol(streams, delay), host, port, backlog=2048
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-addr", default="127.0.0.1:8080")
    parser.add_argument("-redis", default="")
    parser.add_argument("-prefix", default="")
    parser.add_argument("-delay-us", type=float, default=0.0, help="CPU spent per answer")
    args = parser.parse_args()
    host, _, port = args.addr.rpartition(":")
    uvloop.run(serve(host or "127.0.0.1", int(port), args.delay_us / 1e6))


if __name__ == "__main__":
    main()
