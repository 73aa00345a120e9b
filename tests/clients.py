"""Test clients over real sockets: an SSE reader that keeps the exact body bytes, a
WebSocket connection helper, and a raw WebSocket that shows control frames."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from types import TracebackType

import httpx
from websockets.asyncio.client import ClientConnection, connect

TIMEOUT = 5.0


class SSEClient:
    """Reads an SSE response in the background; tests wait for bytes or events."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or {}
        self.body = bytearray()
        self.ended = asyncio.Event()
        self._grew = asyncio.Event()
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT, read=None))
        self._reader: asyncio.Task[None] | None = None
        self.response: httpx.Response | None = None

    async def __aenter__(self) -> SSEClient:
        request = self._client.build_request("GET", self.url, headers=self.headers)
        self.response = await asyncio.wait_for(self._client.send(request, stream=True), TIMEOUT)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self.response is not None:
            await self.response.aclose()
        await self._client.aclose()

    @property
    def status(self) -> int:
        assert self.response is not None
        return self.response.status_code

    async def _read(self) -> None:
        assert self.response is not None
        try:
            async for chunk in self.response.aiter_raw():
                self.body += chunk
                self._grew.set()
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()
            self._grew.set()

    async def wait_for(self, expected: bytes, timeout: float = TIMEOUT) -> bytes:
        """Wait until the body contains `expected`; returns the whole body so far."""
        async with asyncio.timeout(timeout):
            while expected not in self.body:
                if self.ended.is_set():
                    raise AssertionError(f"stream ended without {expected!r}: {bytes(self.body)!r}")
                self._grew.clear()
                await self._grew.wait()
        return bytes(self.body)

    async def wait_end(self, timeout: float = TIMEOUT) -> bytes:
        await asyncio.wait_for(self.ended.wait(), timeout)
        return bytes(self.body)

    def events(self) -> list[str]:
        """The data of complete events so far, parsed as EventSource does."""
        events = []
        for block in bytes(self.body).split(b"\n\n")[:-1]:
            data = [line[5:] for line in block.split(b"\n") if line.startswith(b"data:")]
            if data:
                events.append(b"\n".join(d[1:] if d[:1] == b" " else d for d in data).decode())
        return events


@contextlib.asynccontextmanager
async def websocket(url: str, **kwargs: object) -> AsyncIterator[ClientConnection]:
    async with connect(url, open_timeout=TIMEOUT, close_timeout=2, **kwargs) as ws:  # type: ignore[arg-type]
        yield ws


async def receive(ws: ClientConnection, timeout: float = TIMEOUT) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), timeout)


UPGRADE_HEADERS = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


class RawAnswer:
    """An HTTP answer as it came off the socket: status (0 if the server closed without
    one), headers (names lowercased), body, and whether the server closed after it."""

    def __init__(self, head: bytes, body: bytes, closed: bool) -> None:
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1]) if status_line else 0  # 0: closed, no answer
        self.headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.body = body
        self.closed = closed

    def __repr__(self) -> str:
        body = self.body[:100]
        return f"RawAnswer({self.status}, {self.headers}, {body!r}, closed={self.closed})"


def raw_request(
    port: int, target: str, extra: bytes = b"", websocket: bool = False, within: float = 1.0
) -> RawAnswer:
    """Send one GET over a fresh socket and read its answer, all `within` seconds: the
    head of a 101 or of a stream, or a whole response, up to the server's close if it
    says `Connection: close`. A server that does not answer (or does not close when it
    said it would) in time raises TimeoutError."""
    request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    request += (UPGRADE_HEADERS if websocket else b"") + extra + b"\r\n"
    deadline = time.monotonic() + within
    with socket.create_connection(("127.0.0.1", port), timeout=within) as sock:
        sock.sendall(request)
        received = b""
        while True:
            head, _, body = received.partition(b"\r\n\r\n")
            if _:
                answer = RawAnswer(head, body, closed=False)
                length = answer.headers.get("content-length")
                if answer.status == 101 or length is None:
                    return answer
                if len(body) >= int(length) and answer.headers.get("connection") != "close":
                    return answer
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(f"no complete answer within {within}s: {received!r}") from None
            if not chunk:
                head, _, body = received.partition(b"\r\n\r\n")
                return RawAnswer(head, body, closed=True)
            received += chunk


class RawWebSocket:
    """A hand-driven WebSocket client, to see frames a library would hide (pings)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, path: str) -> RawWebSocket:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def frame(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        """The next frame as (opcode, payload)."""
        async with asyncio.timeout(timeout):
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(length)

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)

    def close(self) -> None:
        self.writer.close()
