#!/usr/bin/env python3
"""Load, latency and memory benchmark for a wspush server.

wspush relays Redis pub/sub to clients: ``PUBLISH <prefix><token> <msg>`` reaches every
client connected with ``?token=<token>`` over WebSocket or Server-Sent Events.  This tool
plays both sides in one process: it opens N client connections spread over T tokens, then
publishes time-stamped messages to Redis at a fixed (or the maximum) rate and measures
what comes back: deliveries, loss, end-to-end latency, disconnects, and (given the
server's pid) the server's memory per connection and CPU use.

Typical use (see bench/README.md for every option and what each figure means)::

    python bench/loadtest.py --url http://127.0.0.1:8080 --redis redis://127.0.0.1:6379 \\
        --transport ws --connections 1000 --tokens 100 --rate 2000 --duration 10

    python bench/loadtest.py --transport mix --connections 2000 --tokens 2000 \\
        --rate 0 --duration 0 --idle 10 --server-pid "$(pgrep -n -f 'wspush')"

The payload of message number ``seq`` is ``"<time.monotonic_ns()> <seq> "`` padded with
``x`` to ``--payload`` bytes; the receiver subtracts the embedded timestamp from its own
``time.monotonic_ns()``.  Both ends read the same CLOCK_MONOTONIC, so this also holds
with ``--publisher process``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import errno
import gc
import hmac
import ipaddress
import json
import math
import os
import platform
import resource
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Final, Protocol
from urllib.parse import quote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

TOOL_VERSION: Final = "1"
MAX_PER_TOKEN: Final = 15  # wspush's default per-token connection limit
READ_SIZE: Final = 65536  # bytes per SSE read(): large reads amortise the per-call cost
HEAD_LIMIT: Final = 65536  # largest HTTP response head we accept
MAX_SSE_LINE: Final = 1 << 22  # an SSE line longer than this is a broken stream, not a message
REDIS_TIMEOUT: Final = 10.0  # bound on any single wait for Redis (connect, write, replies)
PACE_TICK: Final = 0.001  # shortest publisher sleep (s); what is due meanwhile goes in one batch
CHILD_FLAG: Final = "--_publisher-child"  # internal: run as the separate publisher process
SCRIPT: Final = os.path.abspath(__file__)  # re-executed for --publisher process
Json = dict[str, object]


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    """Validated settings; one object so every phase reads the same values."""

    url: str
    host: str
    port: int
    ws_path: str
    sse_path: str
    redis_url: str
    prefix: str
    transport: str
    connections: int
    tokens: int
    rate: float
    duration: float
    payload: int
    idle: float
    connect_rate: float
    inflight: int
    connect_timeout: float
    settle: float
    drain_quiet: float
    drain_max: float
    window: int
    check_rate: float
    server_pid: int | None
    publisher: str
    publisher_cpus: list[int] | None
    token_prefix: str
    hmac_key: bytes | None
    hmac_source: str
    jwt_secret: str
    jwt_ttl: float
    use_uvloop: bool
    json: bool

    @property
    def hostport(self) -> str:
        """Host:port as it appears in a URL (IPv6 literals need brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def idle_mode(self) -> bool:
        """Idle mode measures memory of held connections instead of throughput."""
        return self.idle > 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except the meaningless ones (None, False) of optional settings."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """Define the command line; defaults match the reference workloads of the project."""
    p = argparse.ArgumentParser(
        prog="loadtest.py",
        description="Benchmark a wspush server: N WebSocket/SSE clients, a Redis publisher, "
        "deliveries, loss, latency and server memory per connection.",
        formatter_class=HelpFormatter,
    )
    a = p.add_argument
    a("--url", default="http://127.0.0.1:8080", help="server base URL (http:// or ws://)")
    a("--redis", default="redis://127.0.0.1:6379", help="Redis URL or host:port to PUBLISH to")
    a("--prefix", default="example.", help="channel prefix the server subscribes to")
    a(
        "--transport",
        choices=("ws", "sse", "mix"),
        default="ws",
        help="client type; mix = even connections WS, odd SSE",
    )
    a("-n", "--connections", type=int, default=1000, help="client connections to open")
    a("-t", "--tokens", type=int, default=100, help="distinct tokens; connection i uses i mod T")
    a(
        "--rate",
        type=float,
        default=None,
        help="messages/s to publish (0 = as fast as possible, pipelined) [2000; 0 with --idle]",
    )
    a("--duration", type=float, default=None, help="seconds to publish [10; 0 with --idle]")
    a("--payload", type=int, default=64, help="message size in bytes (minimum: the header)")
    a(
        "--idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="idle mode: hold the connections this long without load, report memory per "
        "connection, then publish once per token as a liveness check",
    )
    a(
        "--connect-rate",
        type=float,
        default=2000.0,
        help="connection starts per second (0 = unpaced)",
    )
    a("--inflight", type=int, default=256, help="maximum concurrent handshakes")
    a("--connect-timeout", type=float, default=10.0, help="seconds allowed per handshake")
    a(
        "--settle",
        type=float,
        default=1.0,
        help="seconds to wait after the last handshake before sampling server RSS and publishing",
    )
    a(
        "--drain-quiet",
        type=float,
        default=1.0,
        help="after publishing, stop waiting once no message arrived for this long",
    )
    a("--drain-max", type=float, default=10.0, help="after publishing, wait at most this long")
    a(
        "--window",
        type=int,
        default=1000,
        help="most PUBLISH commands sent but not yet answered by Redis (the pipeline depth "
        "at --rate 0)",
    )
    a(
        "--check-rate",
        type=float,
        default=5000.0,
        help="publish rate of the idle-mode liveness check",
    )
    a(
        "--server-pid",
        type=int,
        default=None,
        help="server pid: sample RSS (VmRSS summed over it and its descendants) and CPU time",
    )
    a(
        "--publisher",
        choices=("inproc", "process"),
        default="inproc",
        help="publish from this event loop, or from a separate process (no CPU contention "
        "with the receivers inside Python, needed for useful --rate 0 runs)",
    )
    a(
        "--publisher-cpus",
        default=None,
        metavar="LIST",
        help="with --publisher process: CPUs for the publisher, e.g. '1' or '0,1'",
    )
    a("--ws-path", default="/", help="WebSocket path (appended to the URL's path)")
    a("--sse-path", default="/sse", help="SSE path (appended to the URL's path)")
    a(
        "--token-prefix",
        default=None,
        help="token names are <token-prefix><j>; default is random per run, so runs and other "
        "users of the same Redis never see each other's messages",
    )
    a(
        "--hmac-key",
        default=None,
        help="base64url key the server verifies tokens with (default: $WSPUSH_KEY if set); "
        "tokens are then signed like wspush expects",
    )
    a(
        "--jwt-secret",
        default="",
        help="connect with HS256 JWTs signed with this secret (the server's --jwt-secret), "
        "whose sub is the token name (needs PyJWT)",
    )
    a(
        "--jwt-ttl",
        type=float,
        default=3600.0,
        help="with --jwt-secret: seconds until the JWTs expire (0: no exp claim)",
    )
    a("--no-uvloop", action="store_true", help="use the stock asyncio loop even if uvloop is there")
    a(
        "--allow-remote",
        action="store_true",
        help="allow server/Redis targets that are not loopback addresses",
    )
    a("--json", action="store_true", help="print one JSON line instead of the text report")
    return p


def parse_config(argv: Sequence[str]) -> Config:
    """Parse and validate arguments, failing early with one clear message per problem."""
    p = build_parser()
    ns = p.parse_args(argv)
    host, port, base_path = split_server_url(p, ns.url)
    redis_url = ns.redis if "://" in ns.redis else f"redis://{ns.redis}"
    redis_host = urlsplit(redis_url).hostname or ""
    if not ns.allow_remote:
        for what, h in (("--url", host), ("--redis", redis_host)):
            if not is_loopback_host(h):
                p.error(
                    f"{what} host {h!r} is not a loopback address; this tool only sends "
                    "load to the local machine unless --allow-remote is given"
                )
    rate, duration = resolve_rate_duration(p, ns.rate, ns.duration, ns.idle)
    for name, value in (
        ("--connections", ns.connections),
        ("--tokens", ns.tokens),
        ("--inflight", ns.inflight),
        ("--window", ns.window),
    ):
        if value < 1:
            p.error(f"{name} must be at least 1")
    for name, fvalue in (
        ("--payload", ns.payload),
        ("--idle", ns.idle),
        ("--connect-rate", ns.connect_rate),
        ("--settle", ns.settle),
    ):
        if fvalue < 0:
            p.error(f"{name} must not be negative")
    if ns.connect_timeout <= 0 or ns.drain_quiet <= 0 or ns.drain_max <= 0 or ns.check_rate <= 0:
        p.error("timeouts and --check-rate must be positive")
    key, key_source = resolve_hmac_key(p, ns.hmac_key)
    return Config(
        url=ns.url,
        host=host,
        port=port,
        ws_path=join_path(base_path, ns.ws_path),
        sse_path=join_path(base_path, ns.sse_path),
        redis_url=redis_url,
        prefix=ns.prefix,
        transport=ns.transport,
        connections=ns.connections,
        tokens=ns.tokens,
        rate=rate,
        duration=duration,
        payload=ns.payload,
        idle=ns.idle,
        connect_rate=ns.connect_rate,
        inflight=ns.inflight,
        connect_timeout=ns.connect_timeout,
        settle=ns.settle,
        drain_quiet=ns.drain_quiet,
        drain_max=ns.drain_max,
        window=ns.window,
        check_rate=ns.check_rate,
        server_pid=ns.server_pid,
        publisher=ns.publisher,
        publisher_cpus=parse_cpus(p, ns.publisher_cpus),
        token_prefix=ns.token_prefix
        if ns.token_prefix is not None
        else f"lt{secrets.token_hex(3)}-",
        hmac_key=key,
        hmac_source=key_source,
        jwt_secret=ns.jwt_secret,
        jwt_ttl=ns.jwt_ttl,
        use_uvloop=not ns.no_uvloop,
        json=ns.json,
    )


def split_server_url(p: argparse.ArgumentParser, url: str) -> tuple[str, int, str]:
    """Split --url into host, port and base path; TLS is refused (loopback benchmark only)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "ws"):
        p.error(f"--url must start with http:// or ws:// (got {url!r}); TLS is not supported")
    if not parts.hostname:
        p.error(f"--url has no host: {url!r}")
    try:
        port = parts.port or 80
    except ValueError:
        p.error(f"--url has a bad port: {url!r}")
    return parts.hostname, port, parts.path.rstrip("/")


def join_path(base: str, path: str) -> str:
    """Append a route to the URL's base path so a server behind a prefix can be measured."""
    return base + (path if path.startswith("/") else "/" + path)


def resolve_rate_duration(
    p: argparse.ArgumentParser, rate: float | None, duration: float | None, idle: float
) -> tuple[float, float]:
    """Apply mode-dependent defaults; idle mode must not be combined with a load phase."""
    if idle > 0:
        if (rate or 0) > 0 or (duration or 0) > 0:
            p.error("--idle holds connections without load: use --rate 0 --duration 0 (or omit)")
        return 0.0, 0.0
    rate = 2000.0 if rate is None else rate
    duration = 10.0 if duration is None else duration
    if rate < 0 or duration < 0:
        p.error("--rate and --duration must not be negative")
    return rate, duration


def resolve_hmac_key(p: argparse.ArgumentParser, arg: str | None) -> tuple[bytes | None, str]:
    """Decode the HMAC key like wspush does (unpadded base64url); fall back to WSPUSH_KEY."""
    text, source = arg, "--hmac-key"
    if text is None and os.environ.get("WSPUSH_KEY"):
        text, source = os.environ["WSPUSH_KEY"], "WSPUSH_KEY"
    if not text:
        return None, ""
    try:
        padded = text + "=" * (-len(text) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True), source
    except ValueError:
        p.error(f"{source} is not valid base64url")


def parse_cpus(p: argparse.ArgumentParser, text: str | None) -> list[int] | None:
    """Parse a CPU list like '1' or '0,2' for pinning the publisher process."""
    if text is None:
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        p.error(f"--publisher-cpus must be a comma-separated list of CPU numbers: {text!r}")


def is_loopback_host(host: str) -> bool:
    """True for localhost names and loopback literals; names are not resolved (no DNS)."""
    h = host.strip("[]").lower()
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def make_route(cfg: Config, j: int) -> str:
    """The channel suffix of token j: the token, or with JWTs their sub."""
    return f"{cfg.token_prefix}{j}" if cfg.jwt_secret else make_token(cfg, j)


def make_token(cfg: Config, j: int) -> str:
    """Token j; signed as base64url(payload + HMAC-MD5(key, payload)) when a key is set,
    or a JWT whose sub is the name with --jwt-secret."""
    name = f"{cfg.token_prefix}{j}"
    if cfg.jwt_secret:
        import jwt  # PyJWT, only for this mode

        claims: dict[str, object] = {"sub": name, "iat": int(time.time())}
        if cfg.jwt_ttl:
            claims["exp"] = int(time.time() + cfg.jwt_ttl)
        return jwt.encode(claims, cfg.jwt_secret, algorithm="HS256")
    if cfg.hmac_key is None:
        return name
    raw = name.encode() + hmac.new(cfg.hmac_key, name.encode(), "md5").digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def raise_nofile_limit() -> int:
    """Lift the soft fd limit to the hard one: every connection costs one descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------- measurement


class LatencyHistogram:
    """Log-linear histogram of nanosecond values (HDR-style, <= 0.4% relative error).

    Storing every sample would cost 8+ bytes per delivery, which at hundreds of thousands
    of deliveries per second is real memory and GC work; 128 linear sub-buckets per
    power of two keep percentiles exact enough at a fixed size.
    """

    SUB_BITS: Final = 7
    SIZE: Final = (64 << 7) + 256

    def __init__(self) -> None:
        self.counts = [0] * self.SIZE
        self.total = 0
        self.sum_ns = 0
        self.max_ns = 0

    def record(self, ns: int) -> None:
        """Add one sample; negative values (clock skew) count as zero."""
        if ns < 256:
            idx = ns if ns > 0 else 0
        else:
            shift = ns.bit_length() - 8
            idx = (shift << 7) + (ns >> shift)
        self.counts[idx] += 1
        self.total += 1
        self.sum_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns

    @staticmethod
    def bucket_value(idx: int) -> float:
        """Representative (middle) value of bucket idx, the inverse of record()."""
        if idx < 256:
            return float(idx)
        shift = (idx >> 7) - 1
        low = ((idx & 127) + 128) << shift
        return low + ((1 << shift) - 1) / 2

    def percentile(self, q: float) -> float:
        """Value below which a fraction q of the samples lie (nanoseconds)."""
        if self.total == 0:
            return math.nan
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for idx, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return min(self.bucket_value(idx), float(self.max_ns))
        return float(self.max_ns)


class Recorder:
    """Per-message accounting.  record() is the hot path, so it stays tiny."""

    def __init__(self, connections: int) -> None:
        self.hist = LatencyHistogram()
        self.per_conn = [0] * connections
        self.received = 0
        self.other = 0  # messages without a timestamp header: heartbeats, foreign data
        self.first_ns = 0
        self.last_ns = 0

    def record(self, idx: int, data: bytes, now_ns: int) -> None:
        """Count a message for connection idx and record its latency from the header."""
        sp = data.find(b" ")
        try:
            sent_ns = int(data[:sp]) if sp > 0 else -1
        except ValueError:
            sent_ns = -1
        if sent_ns < 0:
            self.other += 1
            return
        self.hist.record(now_ns - sent_ns)
        self.per_conn[idx] += 1
        self.received += 1
        if not self.first_ns:
            self.first_ns = now_ns
        self.last_ns = now_ns


def make_payload(seq: int, size: int) -> bytes:
    """Message body: send timestamp and sequence number first, padded to the wanted size."""
    return f"{time.monotonic_ns()} {seq} ".encode().ljust(size, b"x")


# --------------------------------------------------------------------------- SSE client


class FatalError(Exception):
    """A precondition failed (server or Redis unreachable): stop with one clear message."""


class ProtocolError(Exception):
    """The server's HTTP/SSE bytes did not parse; a bug on one side, not a load effect."""


class HTTPStatusError(Exception):
    """The server answered the handshake with a non-success status (e.g. 429 over limit)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class BodyDecoder(Protocol):
    """Turns raw body bytes into payload bytes (identity or chunked)."""

    done: bool

    def feed(self, data: bytes) -> bytes: ...


class IdentityDecoder:
    """Body without transfer coding: bytes pass through, ending at Content-Length if any."""

    def __init__(self, length: int | None) -> None:
        self.remaining = length
        self.done = length == 0

    def feed(self, data: bytes) -> bytes:
        """Pass bytes through, cutting at the declared length."""
        if self.remaining is None:
            return data
        data = data[: self.remaining]
        self.remaining -= len(data)
        self.done = self.remaining == 0
        return data


class ChunkedDecoder:
    """Incremental ``Transfer-Encoding: chunked`` decoder, fed arbitrary slices of the body."""

    SIZE, DATA, DATA_END, TRAILER = range(4)

    def __init__(self) -> None:
        self.buf = bytearray()
        self.state = self.SIZE
        self.remaining = 0
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Append bytes, return the chunk payload completed so far."""
        buf = self.buf
        buf += data
        out = bytearray()
        pos = 0
        while not self.done:
            if self.state == self.DATA:
                take = min(self.remaining, len(buf) - pos)
                if take == 0:
                    break
                out += buf[pos : pos + take]
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = self.DATA_END
                continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if len(buf) - pos > 4096:
                    raise ProtocolError("chunk header line too long")
                break
            line = bytes(buf[pos:nl]).strip()
            pos = nl + 1
            self._line(line)
        del buf[:pos]
        return bytes(out)

    def _line(self, line: bytes) -> None:
        """Handle one header/terminator line of the chunked framing."""
        if self.state == self.SIZE:
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None
            self.remaining = size
            self.state = self.DATA if size else self.TRAILER
        elif self.state == self.DATA_END:
            if line:
                raise ProtocolError("missing CRLF after chunk data")
            self.state = self.SIZE
        elif not line:  # TRAILER: an empty line ends the body
            self.done = True


class SSEParser:
    """Incremental text/event-stream parser (WHATWG rules that matter for wspush).

    Handles LF, CRLF and lone CR line ends (also split across reads), ``data:`` with or
    without the optional space, multi-line data, comments (``: ping``) and unknown fields
    (``ping:``), which are ignored.  Returns the data of each dispatched event.
    """

    def __init__(self) -> None:
        self.partial = b""
        self.data: list[bytes] = []
        self.skip_lf = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume body bytes, return the events completed by them."""
        if not chunk:
            return []
        if self.skip_lf:
            self.skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            self.skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = (self.partial + chunk).split(b"\n") if self.partial else chunk.split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > MAX_SSE_LINE:
            raise ProtocolError("SSE line too long")
        events: list[bytes] = []
        data = self.data
        for line in lines:
            if not line:
                if data:
                    joined = data[0] if len(data) == 1 else b"\n".join(data)
                    data.clear()
                    if joined:
                        events.append(joined)
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value[:1] == b" " else value)
            elif line == b"data":
                data.append(b"")
        return events


def parse_response_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Parse an HTTP/1.x status line and headers (names lower-cased, repeats joined)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:60]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(parts[1]), headers


def body_decoder(headers: dict[str, str]) -> BodyDecoder:
    """Pick the body framing the response announced."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return ChunkedDecoder()
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ProtocolError(f"bad Content-Length {length!r}")
        return IdentityDecoder(int(length))
    return IdentityDecoder(None)


async def http_get(
    cfg: Config, path: str, accept: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, dict[str, str]]:
    """Send one GET and read the response head; the caller owns the open connection."""
    reader, writer = await asyncio.open_connection(cfg.host, cfg.port, limit=HEAD_LIMIT)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {cfg.hostport}\r\nAccept: {accept}\r\n"
            f"Cache-Control: no-cache\r\nOrigin: http://{cfg.hostport}\r\n"
            f"User-Agent: wspush-loadtest/{TOOL_VERSION}\r\n\r\n".encode("latin-1")
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status, headers = parse_response_head(head)
    except BaseException:
        writer.close()
        raise
    return reader, writer, status, headers


class SSEReceiver:
    """One open SSE stream: reads, decodes and records until the stream ends."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: BodyDecoder,
        idx: int,
        recorder: Recorder,
    ) -> None:
        self.reader, self.writer, self.decoder = reader, writer, decoder
        self.idx, self.recorder = idx, recorder

    @classmethod
    async def open(cls, cfg: Config, token: str, idx: int, recorder: Recorder) -> SSEReceiver:
        """Handshake: GET the stream, insist on 200 and text/event-stream."""
        path = with_token(cfg.sse_path, token)
        reader, writer, status, headers = await http_get(cfg, path, "text/event-stream")
        try:
            if status != 200:
                raise HTTPStatusError(status)
            ctype = headers.get("content-type", "")
            if not ctype.lower().startswith("text/event-stream"):
                raise ProtocolError(f"content-type {ctype!r}")
            decoder = body_decoder(headers)
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, decoder, idx, recorder)

    async def run(self) -> str:
        """Receive until the server ends the stream; return why it ended."""
        read, feed = self.reader.read, self.decoder.feed
        parse = SSEParser().feed
        record, idx, mono = self.recorder.record, self.idx, time.monotonic_ns
        while True:
            chunk = await read(READ_SIZE)
            if not chunk:
                return "sse eof"
            body = feed(chunk)
            if body:
                events = parse(body)
                if events:
                    now = mono()
                    for event in events:
                        record(idx, event, now)
            if self.decoder.done:
                return "sse stream ended"

    async def close(self) -> None:
        """Close our side; bounded by the caller."""
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def with_token(path: str, token: str) -> str:
    """Add the token query parameter, URL-encoded."""
    return f"{path}{'&' if '?' in path else '?'}token={quote(token, safe='')}"


# --------------------------------------------------------------------------- WebSocket client


class WSReceiver:
    """One open WebSocket: records every data frame (binary or text) until it closes."""

    def __init__(self, ws: ClientConnection, idx: int, recorder: Recorder) -> None:
        self.ws, self.idx, self.recorder = ws, idx, recorder

    @classmethod
    async def open(cls, cfg: Config, token: str, idx: int, recorder: Recorder) -> WSReceiver:
        """Handshake with the cheapest settings that still talk to any wspush.

        Origin is sent because the Go original rejects handshakes without it; client pings
        are off because the Go original never answers them; compression is off because a
        relay benchmark should not measure zlib.
        """
        ws = await connect(
            f"ws://{cfg.hostport}{with_token(cfg.ws_path, token)}",
            origin=Origin(f"http://{cfg.hostport}"),
            compression=None,
            proxy=None,
            ping_interval=None,
            ping_timeout=None,
            open_timeout=None,
            close_timeout=2,
            max_size=max(1 << 20, cfg.payload * 2),
            user_agent_header=f"wspush-loadtest/{TOOL_VERSION}",
        )
        return cls(ws, idx, recorder)

    async def run(self) -> str:
        """Receive until the connection closes; return the close code as the reason."""
        recv, record, idx, mono = self.ws.recv, self.recorder.record, self.idx, time.monotonic_ns
        try:
            while True:
                data = await recv(decode=False)
                record(idx, data, mono())
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            return f"ws close {code}" if code is not None else "ws closed without close frame"

    async def close(self) -> None:
        """Close handshake (bounded by close_timeout)."""
        await self.ws.close()


class Receiver(Protocol):
    """What the connection manager needs from either transport."""

    async def run(self) -> str: ...

    async def close(self) -> None: ...


def failure_reason(exc: BaseException) -> str:
    """Short, countable reason for a failed handshake: status code or exception type."""
    if isinstance(exc, InvalidStatus):
        return f"http {exc.response.status_code}"
    if isinstance(exc, HTTPStatusError):
        return f"http {exc.status}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return f"{type(exc).__name__} {errno.errorcode.get(exc.errno, exc.errno)}"
    return type(exc).__name__


# --------------------------------------------------------------------------- /proc sampling


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name (which may contain spaces)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()
    except OSError:
        return None


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants: uvicorn/nginx-style servers fork workers."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def tree_rss_kb(pid: int) -> tuple[int, int] | None:
    """(VmRSS in KiB summed over the process tree, process count); None if pid is gone."""
    total, count = 0, 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            count += 1
        except (OSError, ValueError):
            if p == pid:
                return None
    return total, count


def tree_cpu_s(pid: int) -> float | None:
    """User+system CPU seconds of the process tree (to see whether the server saturated)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        fields = _stat_fields(p)
        if fields is None:
            if p == pid:
                return None
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


# --------------------------------------------------------------------------- publisher


@dataclass
class PublishResult:
    """What the publisher achieved; start/end are time.monotonic() seconds."""

    published: int = 0
    start: float = 0.0
    end: float = 0.0
    no_subscriber: int = 0
    cpu_s: float | None = None
    error: str | None = None


def open_redis(url: str) -> aioredis.Redis:
    """Redis client with bounded socket waits (a hung Redis must not hang the tool)."""
    return aioredis.Redis.from_url(
        url, socket_timeout=10, socket_connect_timeout=5, decode_responses=False
    )


class PublishError(Exception):
    """Redis refused or stopped answering PUBLISH; the run's figures would be meaningless."""


class RedisPipe:
    """One Redis connection used as a pipe for PUBLISH.

    Batches are written without waiting for their replies; a reader task counts the
    replies (and the zeros: no subscriber) as they come back.  redis-py's Pipeline costs a
    round trip plus a few hundred microseconds of Python per execute(), which at the rates
    this tool publishes would eat the CPU the receivers need.  The connection has no
    socket_timeout because redis-py would then wrap every write and read in a timeout
    task of its own; this class bounds its waits itself.
    """

    def __init__(self, conn: AbstractConnection) -> None:
        self.conn = conn
        self.sent = 0
        self.acked = 0
        self.no_subscriber = 0
        self.error: Exception | None = None
        self._more = asyncio.Event()
        self._progress = asyncio.Event()
        self._reader = asyncio.create_task(self._read_replies())

    @classmethod
    async def open(cls, url: str) -> RedisPipe:
        """Connect one dedicated connection (not from a shared client's pool)."""
        pool = aioredis.ConnectionPool.from_url(url, socket_timeout=None, socket_connect_timeout=5)
        conn: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
        async with asyncio.timeout(REDIS_TIMEOUT):
            await conn.connect()  # type: ignore[no-untyped-call]
        return cls(conn)

    async def _read_replies(self) -> None:
        """Consume one integer reply per PUBLISH sent; stop at the first error."""
        conn = self.conn
        try:
            while True:
                if self.acked >= self.sent:
                    self._more.clear()
                    await self._more.wait()
                    continue
                reply = await conn.read_response()
                self.acked += 1
                if reply == 0:
                    self.no_subscriber += 1
                self._progress.set()
        except Exception as exc:  # handed to the writer, which raises it
            self.error = exc
            self._progress.set()

    async def send(self, packed: bytes, count: int) -> None:
        """Write count already-encoded commands in one go, without waiting for replies."""
        if self.error is not None:
            raise PublishError(f"Redis: {self.error!r}") from self.error
        async with asyncio.timeout(REDIS_TIMEOUT):
            await self.conn.send_packed_command(packed, check_health=False)
        self.sent += count
        self._more.set()

    async def wait_outstanding(self, limit: int) -> None:
        """Wait until at most limit replies are missing (flow control and final flush)."""
        if self.sent - self.acked <= limit and self.error is None:
            return
        async with asyncio.timeout(REDIS_TIMEOUT):
            while self.sent - self.acked > limit and self.error is None:
                self._progress.clear()
                await self._progress.wait()
        if self.error is not None:
            raise PublishError(f"Redis: {self.error!r}") from self.error

    async def close(self) -> None:
        """Stop the reader and drop the connection (bounded)."""
        self._reader.cancel()
        await asyncio.wait({self._reader}, timeout=1)
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(2):
                await self.conn.disconnect()


def publish_heads(channels: Sequence[bytes]) -> list[bytes]:
    """RESP encoding of ``PUBLISH <channel>`` per channel, computed once per run."""
    return [b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(ch), ch) for ch in channels]


def publish_batch(heads: Sequence[bytes], first: int, n: int, size: int) -> bytes:
    """RESP-encoded PUBLISH commands for messages first..first+n-1, round-robin.

    Encoded by hand because redis-py's generic pack_command() costs tens of microseconds
    per command, more than everything else the publisher does.
    """
    ntok = len(heads)
    parts = []
    for seq in range(first, first + n):
        payload = make_payload(seq, size)
        parts.append(heads[seq % ntok] + b"$%d\r\n%s\r\n" % (len(payload), payload))
    return b"".join(parts)


async def publish_at_rate(
    pipe: RedisPipe,
    channels: Sequence[bytes],
    rate: float,
    count: int,
    size: int,
    window: int,
    stop: asyncio.Event,
) -> float:
    """Publish count messages round-robin at a fixed rate, paced against a schedule.

    Message k is due at start + k/rate.  Each wake-up (at most one per PACE_TICK) sends
    everything due (up to ~10 ms worth) as one batch, so timer jitter is caught up instead
    of accumulating as it would with one sleep per message.  A publisher that cannot keep
    up stops at 1.5x the planned time; the shortfall shows in the achieved rate.
    Returns the start time.
    """
    heads = publish_heads(channels)
    start = time.monotonic()
    max_batch = max(16, int(rate // 100))
    deadline = start + 1.5 * count / rate + 1.0
    sent = 0
    while sent < count and not stop.is_set():
        now = time.monotonic()
        if now > deadline:
            break
        n = min(count, int((now - start) * rate) + 1, sent + max_batch) - sent
        if n <= 0:
            # Never sleep less than a tick: uvloop rounds sub-millisecond timers to zero,
            # which would turn this wait into a busy loop competing with the receivers.
            await asyncio.sleep(max(start + sent / rate - now, PACE_TICK))
            continue
        await pipe.wait_outstanding(max(0, window - n))
        await pipe.send(publish_batch(heads, sent, n, size), n)
        sent += n
    return start


async def publish_max(
    pipe: RedisPipe,
    channels: Sequence[bytes],
    duration: float,
    size: int,
    window: int,
    stop: asyncio.Event,
) -> float:
    """Publish as fast as Redis answers for duration seconds, window commands in flight.

    Batches of a quarter window keep the socket busy while replies stream back.  All go
    through one connection in order, so messages 0..published-1 are exactly the ones sent
    (round-robin then tells how many went to each token).  Returns the start time.
    """
    heads = publish_heads(channels)
    start = time.monotonic()
    batch = max(1, window // 4)
    end = start + duration
    sent = 0
    while not stop.is_set() and time.monotonic() < end:
        await pipe.wait_outstanding(window - batch)
        await pipe.send(publish_batch(heads, sent, batch, size), batch)
        sent += batch
    return start


async def publish(
    redis_url: str,
    channels: Sequence[bytes],
    rate: float,
    count: int,
    duration: float,
    size: int,
    window: int,
    stop: asyncio.Event,
) -> PublishResult:
    """Connect, publish (fixed rate or max), wait for every reply, always disconnect."""
    pipe = await RedisPipe.open(redis_url)
    try:
        if rate > 0:
            start = await publish_at_rate(pipe, channels, rate, count, size, window, stop)
        else:
            start = await publish_max(pipe, channels, duration, size, window, stop)
        await pipe.wait_outstanding(0)
        return PublishResult(
            published=pipe.acked,
            start=start,
            end=time.monotonic(),
            no_subscriber=pipe.no_subscriber,
        )
    finally:
        await pipe.close()


async def publish_in_child(
    cfg: Config, channels: Sequence[bytes], count: int, stop: asyncio.Event
) -> PublishResult:
    """Run the publisher as a separate process so it does not steal this loop's time."""
    spec = {
        "redis": cfg.redis_url,
        "channels": [c.decode("latin-1") for c in channels],
        "rate": cfg.rate,
        "count": count,
        "duration": cfg.duration,
        "payload": cfg.payload,
        "window": cfg.window,
        "cpus": cfg.publisher_cpus,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        SCRIPT,
        CHILD_FLAG,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        return await await_child(proc, json.dumps(spec).encode(), 1.5 * cfg.duration + 30, stop)
    finally:
        if proc.returncode is None:  # cancelled (second Ctrl-C): never leave it running
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


async def await_child(
    proc: asyncio.subprocess.Process, spec: bytes, limit: float, stop: asyncio.Event
) -> PublishResult:
    """Feed the spec and wait for the result; on Ctrl-C or timeout interrupt, then kill."""
    comm = asyncio.ensure_future(proc.communicate(spec))
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({comm, stopper}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not comm.done() and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)  # the child stops and still reports what it sent
        await asyncio.wait({comm}, timeout=5)
    if not comm.done():
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.wait({comm}, timeout=5)
        comm.cancel()
        return PublishResult(error="publisher process did not finish")
    out, _ = comm.result()
    try:
        return PublishResult(**json.loads(out.decode().strip().splitlines()[-1]))
    except (ValueError, IndexError, TypeError):
        return PublishResult(error=f"publisher process exited {proc.returncode} without result")


def publisher_child_main() -> int:
    """Entry point of the --publisher process child: JSON spec on stdin, result on stdout."""
    spec = json.loads(sys.stdin.read())
    if spec.get("cpus"):
        os.sched_setaffinity(0, spec["cpus"])

    async def run() -> PublishResult:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        channels = [c.encode("latin-1") for c in spec["channels"]]
        try:
            return await publish(
                spec["redis"],
                channels,
                spec["rate"],
                spec["count"],
                spec["duration"],
                spec["payload"],
                spec["window"],
                stop,
            )
        except Exception as exc:  # reported to the parent, which prints it
            return PublishResult(error=f"{type(exc).__name__}: {exc}")

    with asyncio.Runner(loop_factory=loop_factory(use_uvloop=True)) as runner:
        res = runner.run(run())
    res.cpu_s = time.process_time()
    print(json.dumps(asdict(res)), flush=True)
    return 0


# --------------------------------------------------------------------------- the run


@dataclass(eq=False)
class Conn:
    """One client connection slot: its token, transport and current receiver."""

    idx: int
    token_idx: int
    transport: str
    receiver: Receiver | None = None
    task: asyncio.Task[None] | None = None


@dataclass
class Setup:
    """Handshake accounting for the setup-rate and failure figures."""

    opened: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    first_start: float = 0.0
    last_done: float = 0.0
    done: int = 0


class Run:
    """All state of one benchmark run, phase by phase."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.tokens = [make_token(cfg, j) for j in range(cfg.tokens)]
        self.channels = [f"{cfg.prefix}{make_route(cfg, j)}".encode() for j in range(cfg.tokens)]
        self.recorder = Recorder(cfg.connections)
        self.conns = [
            Conn(i, i % cfg.tokens, pick_transport(cfg.transport, i))
            for i in range(cfg.connections)
        ]
        self.setup = Setup()
        self.all_done = asyncio.Event()
        self.gate = asyncio.Semaphore(cfg.inflight)
        self.disconnects: Counter[str] = Counter()
        self.closing = False
        self.stop = asyncio.Event()
        self.warnings: list[str] = []
        self.report: Json = {}

    # -- helpers

    async def pause(self, seconds: float) -> bool:
        """Sleep that ends early on Ctrl-C; returns True if the run is being stopped."""
        if seconds > 0 and not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), seconds)
        return self.stop.is_set()

    async def wait_event(self, event: asyncio.Event, limit: float) -> bool:
        """Wait for event, Ctrl-C or timeout, whichever first; True if event is set."""
        tasks = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(self.stop.wait())}
        _, pending = await asyncio.wait(tasks, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        return event.is_set()

    def on_signal(self) -> None:
        """First Ctrl-C: finish cleanly with partial results; the second one aborts."""
        if not self.stop.is_set():
            print("\nstopping (Ctrl-C again to abort)...", file=sys.stderr, flush=True)
            self.stop.set()
            asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)

    # -- preflight

    async def preflight(self) -> None:
        """Fail fast with one message if the server or Redis is unreachable."""
        try:
            async with asyncio.timeout(5):
                _, writer, status, _ = await http_get(
                    self.cfg, join_path(urlsplit(self.cfg.url).path.rstrip("/"), "/ping"), "*/*"
                )
                writer.close()
        except (OSError, TimeoutError, ProtocolError, asyncio.IncompleteReadError) as exc:
            reason = failure_reason(exc)
            raise FatalError(f"server {self.cfg.url} not reachable: {reason}") from None
        if status != 200:
            self.warnings.append(f"GET /ping answered {status}, not 200")
        r = open_redis(self.cfg.redis_url)
        try:
            async with asyncio.timeout(5):
                await r.ping()
        except (OSError, TimeoutError, aioredis.RedisError) as exc:
            raise FatalError(
                f"Redis {self.cfg.redis_url} not reachable: {failure_reason(exc)}: {exc}"
            ) from None
        finally:
            await r.aclose()

    # -- connections

    async def conn_main(self, conn: Conn) -> None:
        """Open one connection under the handshake gate, then receive until it ends."""
        cfg = self.cfg
        token = self.tokens[conn.token_idx]
        opener: Callable[[Config, str, int, Recorder], Awaitable[Receiver]] = (
            WSReceiver.open if conn.transport == "ws" else SSEReceiver.open
        )
        try:
            async with self.gate:
                if not self.setup.first_start:
                    self.setup.first_start = time.monotonic()
                async with asyncio.timeout(cfg.connect_timeout):
                    receiver = await opener(cfg, token, conn.idx, self.recorder)
        except Exception as exc:
            self.handshake_done(failure_reason(exc))
            return
        conn.receiver = receiver
        self.handshake_done(None)
        try:
            reason = await receiver.run()
        except Exception as exc:  # a broken stream is a disconnect, whatever the cause
            reason = failure_reason(exc)
        if not self.closing:
            self.disconnects[reason] += 1

    def handshake_done(self, failure: str | None) -> None:
        """Count a finished handshake; the last one releases open_all()."""
        s = self.setup
        if failure is None:
            s.opened += 1
        else:
            s.failures[failure] += 1
        s.last_done = time.monotonic()
        s.done += 1
        if s.done == self.cfg.connections:
            self.all_done.set()

    async def open_all(self) -> None:
        """Start connections at --connect-rate and wait (bounded) for every handshake."""
        cfg = self.cfg
        t0 = time.monotonic()
        started = 0
        while started < cfg.connections and not self.stop.is_set():
            due = (
                cfg.connections
                if cfg.connect_rate <= 0
                else min(cfg.connections, int((time.monotonic() - t0) * cfg.connect_rate) + 1)
            )
            for conn in self.conns[started:due]:
                conn.task = asyncio.create_task(self.conn_main(conn))
            started = max(started, due)
            if started < cfg.connections:
                await self.pause(t0 + started / cfg.connect_rate - time.monotonic())
        waves = math.ceil(cfg.connections / cfg.inflight) + 1
        finished = await self.wait_event(self.all_done, cfg.connect_timeout * waves + 5)
        if not finished and not self.stop.is_set():
            self.warnings.append("not every handshake finished in time")

    async def close_all(self) -> None:
        """Close every connection concurrently, then cancel what is left; all bounded."""
        self.closing = True
        closers = [
            asyncio.ensure_future(c.receiver.close()) for c in self.conns if c.receiver is not None
        ]
        if closers:
            _, pending = await asyncio.wait(closers, timeout=5)
            for t in pending:
                t.cancel()
        tasks = [c.task for c in self.conns if c.task is not None and not c.task.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def open_per_token(self) -> list[int]:
        """Connections that completed their handshake, per token index."""
        counts = [0] * self.cfg.tokens
        for c in self.conns:
            if c.receiver is not None:
                counts[c.token_idx] += 1
        return counts

    # -- load phases

    async def drain(self, pub_end: float) -> float:
        """After publishing, wait until no message arrived for drain_quiet (max drain_max)."""
        cfg = self.cfg
        while not self.stop.is_set():
            now = time.monotonic()
            last = max(self.recorder.last_ns / 1e9, pub_end)
            if now - last >= cfg.drain_quiet or now - pub_end >= cfg.drain_max:
                break
            await self.pause(0.05)
        return time.monotonic() - pub_end

    async def publish_phase(self, count: int, rate: float, in_child: bool) -> PublishResult:
        """Publish (in-process or in a child) with Ctrl-C support; errors become a result."""
        cfg = self.cfg
        if in_child:
            return await publish_in_child(cfg, self.channels, count, self.stop)
        try:
            return await publish(
                cfg.redis_url,
                self.channels,
                rate,
                count,
                cfg.duration,
                cfg.payload,
                cfg.window,
                self.stop,
            )
        except (OSError, TimeoutError, aioredis.RedisError, PublishError) as exc:
            return PublishResult(error=f"{type(exc).__name__}: {exc}")

    async def load(self) -> None:
        """Publish for --duration and drain, measuring server and client CPU meanwhile."""
        cfg = self.cfg
        count = max(1, round(cfg.rate * cfg.duration)) if cfg.rate > 0 else 0
        self.report["publish_target"] = cfg.rate or None
        cpu0 = self.server_cpu()
        pcpu0, t0 = time.process_time(), time.monotonic()
        res = await self.publish_phase(count, cfg.rate, cfg.publisher == "process")
        drain_s = await self.drain(res.end or time.monotonic())
        cpu1 = self.server_cpu()
        window = time.monotonic() - t0
        self.report_publish(res, count or None, drain_s)
        self.report_cpu(cpu0, cpu1, time.process_time() - pcpu0, window, res.cpu_s)

    async def idle_check(self) -> None:
        """Hold the connections idle, then publish one message per token as a liveness check."""
        cfg = self.cfg
        if await self.pause(cfg.idle):
            return
        self.report["rss_idle_end_kb"] = self.rss()
        self.report["publish_target"] = cfg.check_rate
        res = await self.publish_phase(cfg.tokens, cfg.check_rate, in_child=False)
        drain_s = await self.drain(res.end or time.monotonic())
        self.report_publish(res, cfg.tokens, drain_s)
        per_conn = [self.recorder.per_conn[c.idx] for c in self.conns if c.receiver is not None]
        self.report["check_ok_connections"] = sum(1 for n in per_conn if n == 1)

    # -- server sampling

    def rss(self) -> int | None:
        """Server RSS in KiB (tree sum), or None without --server-pid."""
        if self.cfg.server_pid is None:
            return None
        sample = tree_rss_kb(self.cfg.server_pid)
        if sample is None:
            self.warnings.append(f"server pid {self.cfg.server_pid} not found")
            return None
        self.report["server_processes"] = sample[1]
        return sample[0]

    def server_cpu(self) -> float | None:
        """Server CPU seconds so far (tree sum), or None without --server-pid."""
        return None if self.cfg.server_pid is None else tree_cpu_s(self.cfg.server_pid)

    # -- main sequence

    async def execute(self) -> Json:
        """Run every phase in order; connections are closed whatever happens."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self.on_signal)
        loop.add_signal_handler(signal.SIGTERM, self.on_signal)
        self.report.update(conditions(self.cfg))
        self.check_conditions()
        await self.preflight()
        self.report["rss_before_kb"] = self.rss()
        try:
            setup_cpu = self.server_cpu()
            await self.open_all()
            self.report_setup()
            setup_cpu_end = self.server_cpu()
            if setup_cpu is not None and setup_cpu_end is not None:
                self.report["setup_server_cpu_s"] = round(setup_cpu_end - setup_cpu, 3)
            settle = max(self.cfg.settle, 2.0) if self.cfg.idle_mode else self.cfg.settle
            if not self.stop.is_set() and self.setup.opened and not await self.pause(settle):
                self.report["rss_after_kb"] = self.rss()
                # Connection objects live for the whole run: move them out of the GC's
                # generations so collections during the measurement do not rescan them.
                gc.collect()
                gc.freeze()
                if self.cfg.idle_mode:
                    await self.idle_check()
                elif self.cfg.duration > 0:
                    await self.load()
        finally:
            await self.close_all()
        self.report_results()
        return self.report

    def check_conditions(self) -> None:
        """Warn about setups that cannot give the intended figures."""
        cfg = self.cfg
        per_token = math.ceil(cfg.connections / cfg.tokens)
        if per_token > MAX_PER_TOKEN:
            self.warnings.append(
                f"{per_token} connections per token exceeds the server's default limit of "
                f"{MAX_PER_TOKEN}; expect refusals (HTTP 429) -- raise --tokens"
            )
        if cfg.tokens > cfg.connections:
            self.warnings.append("more tokens than connections: some messages have no receiver")
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile != resource.RLIM_INFINITY and cfg.connections + 64 > nofile:
            self.warnings.append(
                f"RLIMIT_NOFILE is {nofile}: not enough descriptors for "
                f"{cfg.connections} connections"
            )
        header = len(make_payload(max(cfg.tokens, round(cfg.rate * cfg.duration)), 0))
        if cfg.payload < header:
            self.warnings.append(
                f"--payload {cfg.payload} is smaller than the timestamp header; messages are "
                f"up to {header} bytes"
            )
        if cfg.rate == 0 and cfg.duration > 0 and cfg.publisher == "inproc":
            self.warnings.append(
                "--rate 0 in-process starves the receivers; consider --publisher process"
            )

    # -- report

    def report_setup(self) -> None:
        """Setup figures: opened, failures by reason, time and rate."""
        s = self.setup
        span = s.last_done - s.first_start if s.done else 0.0
        self.report.update(
            opened=s.opened,
            failed=sum(s.failures.values()),
            failures=dict(s.failures),
            setup_s=round(span, 4),
            setup_rate=round(s.opened / span, 1) if span > 0 else None,
        )

    def report_publish(self, res: PublishResult, planned: int | None, drain_s: float) -> None:
        """Publisher figures and the expected delivery count derived from them."""
        span = res.end - res.start
        if res.error:
            self.warnings.append(f"publisher error: {res.error}")
        if res.no_subscriber:
            self.warnings.append(
                f"{res.no_subscriber} PUBLISH reached no subscriber: is the "
                f"server subscribed to {self.cfg.prefix}* on this Redis?"
            )
        self.report.update(
            planned=planned,
            published=res.published,
            publish_s=round(span, 4),
            publish_rate=round(res.published / span, 1) if span > 0 else None,
            no_subscriber=res.no_subscriber,
            drain_s=round(drain_s, 3),
            expected=expected_deliveries(res.published, self.open_per_token()),
        )
        if planned and res.published < 0.95 * planned and not self.stop.is_set():
            self.warnings.append(f"publisher fell behind: {res.published} of {planned} sent")

    def report_cpu(
        self,
        cpu0: float | None,
        cpu1: float | None,
        client_cpu: float,
        window: float,
        pub_cpu: float | None,
    ) -> None:
        """CPU use over publish+drain: tells whether server or client was the bottleneck."""
        self.report.update(
            cpu_window_s=round(window, 3),
            client_cpu_s=round(client_cpu, 3),
            client_cpu_frac=round(client_cpu / window, 3) if window else None,
            publisher_cpu_s=None if pub_cpu is None else round(pub_cpu, 3),
        )
        if cpu0 is not None and cpu1 is not None:
            used = cpu1 - cpu0
            self.report.update(
                server_cpu_s=round(used, 3),
                server_cpu_frac=round(used / window, 3) if window else None,
            )
        if window and client_cpu / window > 0.85:
            self.warnings.append(
                "the client used >85% of a core: delivered/s and latency may be "
                "limited by this tool, not the server"
            )

    def report_results(self) -> None:
        """Delivery, latency, disconnect and memory figures, plus warnings."""
        rec, rep = self.recorder, self.report
        h = rec.hist
        expected = rep.get("expected")
        span = (rec.last_ns - rec.first_ns) / 1e9
        rep.update(
            received=rec.received,
            other_messages=rec.other,
            delivered_per_s=round(rec.received / span, 1) if span > 0 else None,
            loss=round(1 - rec.received / expected, 6)
            if isinstance(expected, int) and expected
            else None,
            dropped=expected - rec.received if isinstance(expected, int) else None,
            disconnects=sum(self.disconnects.values()),
            disconnect_reasons=dict(self.disconnects),
            interrupted=self.stop.is_set(),
        )
        opened = [rec.per_conn[c.idx] for c in self.conns if c.receiver is not None]
        rep.update(per_conn_min=min(opened, default=None), per_conn_max=max(opened, default=None))
        for key, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
            rep[f"latency_ms_{key}"] = ms(h.percentile(q))
        rep["latency_ms_max"] = ms(float(h.max_ns)) if h.total else None
        rep["latency_ms_mean"] = ms(h.sum_ns / h.total) if h.total else None
        rep.update(memory_figures(rep, self.setup.opened))
        if rec.other:
            self.warnings.append(
                f"{rec.other} messages had no timestamp header (heartbeats "
                "with a payload, or someone else publishing on these tokens)"
            )
        rep["warnings"] = self.warnings


def pick_transport(transport: str, i: int) -> str:
    """Transport of connection i; mix alternates so both kinds are spread over tokens."""
    if transport == "mix":
        return "ws" if i % 2 == 0 else "sse"
    return transport


def expected_deliveries(published: int, open_per_token: Sequence[int]) -> int:
    """Deliveries a lossless server makes: messages 0..published-1 go round-robin."""
    full, rest = divmod(published, len(open_per_token))
    return sum(open_per_token) * full + sum(open_per_token[:rest])


def memory_figures(rep: Json, opened: int) -> Json:
    """KiB per connection from the RSS samples, when the server pid was given."""
    before, after = rep.get("rss_before_kb"), rep.get("rss_after_kb")
    if not (isinstance(before, int) and isinstance(after, int) and opened):
        return {"kb_per_conn": None}
    return {"kb_per_conn": round((after - before) / opened, 2)}


def ms(ns: float) -> float | None:
    """Nanoseconds to milliseconds (3 decimals), None for no data."""
    return None if math.isnan(ns) else round(ns / 1e6, 3)


def conditions(cfg: Config) -> Json:
    """Everything needed to reproduce or compare a run."""
    return {
        "tool": f"wspush-loadtest/{TOOL_VERSION}",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "url": cfg.url,
        "redis": cfg.redis_url,
        "prefix": cfg.prefix,
        "transport": cfg.transport,
        "connections": cfg.connections,
        "tokens": cfg.tokens,
        "conns_per_token": round(cfg.connections / cfg.tokens, 2),
        "rate": cfg.rate,
        "duration": cfg.duration,
        "payload": cfg.payload,
        "idle": cfg.idle,
        "connect_rate": cfg.connect_rate,
        "inflight": cfg.inflight,
        "publisher": cfg.publisher,
        "token_prefix": cfg.token_prefix,
        "hmac": cfg.hmac_source or None,
        "python": platform.python_version(),
        "loop": loop_name(),
        "websockets": pkg_version("websockets"),
        "redis_py": pkg_version("redis"),
        "cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "loadavg": round(os.getloadavg()[0], 2),
        "server_pid": cfg.server_pid,
    }


def pkg_version(name: str) -> str | None:
    """Installed version of a distribution, for the conditions line."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def loop_name() -> str:
    """Which event loop runs the clients (uvloop is several times cheaper per message)."""
    loop = asyncio.get_running_loop()
    mod = type(loop).__module__
    return f"uvloop {pkg_version('uvloop')}" if mod.startswith("uvloop") else "asyncio"


# --------------------------------------------------------------------------- output


def fmt(value: object, spec: str = "") -> str:
    """Format a report value, showing '-' for missing data."""
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def mib(value: object) -> str:
    """KiB figure as MiB text."""
    return f"{value / 1024:.1f} MiB" if isinstance(value, int) else "-"


def text_report(rep: Json) -> str:
    """Human-readable report; the same figures as the JSON line."""
    g = rep.get
    lines = [
        f"conditions   {g('url')} transport={g('transport')} connections={g('connections')} "
        f"tokens={g('tokens')} ({g('conns_per_token')}/token) rate={g('rate')}/s "
        f"duration={g('duration')}s payload={g('payload')}B idle={g('idle')}s "
        f"publisher={g('publisher')}",
        f"             python {g('python')}, {g('loop')}, websockets {g('websockets')}, "
        f"redis-py {g('redis_py')}; {g('cpus')} CPUs, affinity {g('affinity')}, "
        f"load {g('loadavg')}; tokens {g('token_prefix')}*"
        + (f" signed ({g('hmac')})" if g("hmac") else ""),
        f"setup        {g('opened')} open, {g('failed')} failed in {fmt(g('setup_s'))} s "
        f"({fmt(g('setup_rate'))} conn/s)"
        + (f"; failures: {g('failures')}" if g("failed") else ""),
    ]
    if "published" in rep:
        planned = f" of {g('planned')}" if g("planned") else ""
        target = f"target {g('publish_target')}/s" if g("publish_target") else "max rate"
        if g("idle"):
            target += ", idle liveness check: one per token"
        lines += [
            f"publish      {g('published')}{planned} published in {fmt(g('publish_s'))} s = "
            f"{fmt(g('publish_rate'))}/s ({target}); drained {g('drain_s')} s",
            f"delivery     expected {g('expected')}, received {g('received')}, "
            f"{fmt(g('delivered_per_s'))}/s, loss {fmt(g('loss'))} ({fmt(g('dropped'))} dropped);"
            f" per connection min {fmt(g('per_conn_min'))} max {fmt(g('per_conn_max'))}"
            + (
                f"; check ok on {g('check_ok_connections')} of {g('opened')} connections"
                if g("idle")
                else ""
            ),
            f"latency ms   p50 {fmt(g('latency_ms_p50'))}  p90 {fmt(g('latency_ms_p90'))}  "
            f"p99 {fmt(g('latency_ms_p99'))}  p99.9 {fmt(g('latency_ms_p999'))}  "
            f"max {fmt(g('latency_ms_max'))}  mean {fmt(g('latency_ms_mean'))}",
        ]
    lines.append(
        f"disconnects  {g('disconnects')}"
        + (f" {g('disconnect_reasons')}" if g("disconnects") else "")
    )
    if g("server_pid") is not None:
        lines.append(
            f"server       pid {g('server_pid')} ({fmt(g('server_processes'))} processes): RSS "
            f"{mib(g('rss_before_kb'))} before, {mib(g('rss_after_kb'))} with connections open"
            f" -> {fmt(g('kb_per_conn'))} KiB/conn"
            + (f"; {mib(g('rss_idle_end_kb'))} after idle" if g("idle") else "")
            + (
                f"; CPU {g('server_cpu_s')} s = {g('server_cpu_frac')} of a core"
                if g("server_cpu_s") is not None
                else ""
            )
        )
    if g("client_cpu_s") is not None:
        lines.append(
            f"client       CPU {g('client_cpu_s')} s = {g('client_cpu_frac')} of a core "
            f"over {g('cpu_window_s')} s publish+drain"
            + (
                f"; publisher process {g('publisher_cpu_s')} s"
                if g("publisher_cpu_s") is not None
                else ""
            )
        )
    warnings = g("warnings")
    if isinstance(warnings, list):
        lines += [f"warning      {w}" for w in warnings]
    if g("interrupted"):
        lines.append("interrupted  partial results (Ctrl-C)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry points


def loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop if wanted and importable, else the default."""
    if not use_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, print; exit 130 on an aborting second Ctrl-C, 1 if nothing opened."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [CHILD_FLAG]:
        return publisher_child_main()
    cfg = parse_config(args)
    raise_nofile_limit()
    try:
        with asyncio.Runner(loop_factory=loop_factory(cfg.use_uvloop)) as runner:
            rep = runner.run(Run(cfg).execute())
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    except FatalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(rep, separators=(",", ":")) if cfg.json else text_report(rep), flush=True)
    if rep.get("interrupted"):
        return 130
    return 0 if rep.get("opened") else 1


if __name__ == "__main__":
    sys.exit(main())
