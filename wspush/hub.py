"""Per-token fan-out: the subscriber hands each message to the hub, the hub to every
connection's bounded queue, and each endpoint drains its own queue.

The hub never waits: a full queue loses the message (counted), so one slow client can
never delay the Redis reader or the other clients.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

from wspush.expiry import Entry, ExpiryTimer
from wspush.lightweight import LightQueue
from wspush.protocols import DirectWriter
from wspush.stats import LatencyHistogram, Stats

if TYPE_CHECKING:
    from wspush.interest import Interest

logger = logging.getLogger("wspush.hub")

_UNSET: object = object()
# Close code for a client disconnected for not reading (RFC 6455: policy violation).
CLOSE_TOO_SLOW = 1008
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008


@dataclass(frozen=True)
class CloseReason:
    """Why the relay closes a connection, in the words of each transport: the WebSocket
    close code and reason, and the SSE bytes that end the stream (None: the relay's
    `retry:` hint, with its jitter). Every delivery path ends a connection with the
    reason its subscription was closed with."""

    code: int
    reason: str = ""
    sse: bytes | None = None


GOING_AWAY = CloseReason(CLOSE_GOING_AWAY)
# The page learns why the stream ended, and fetches a fresh token before reconnecting
# (EventSource would retry with the expired one). An event needs data to be dispatched.
EXPIRED = CloseReason(
    CLOSE_POLICY_VIOLATION, "token expired", b"event: wspush-expired\ndata: token expired\n\n"
)


class Transport(StrEnum):
    WEBSOCKET = "ws"
    SSE = "sse"


class Message:
    """One published payload, shared by every connection that receives it.

    Its wire forms (SSE event, HTTP chunk, WebSocket frames) are computed on first use
    and cached, so a message fanned out to a thousand clients is encoded once.
    """

    __slots__ = (
        "_binary_frame",
        "_chunk",
        "_sse",
        "_text",
        "_text_frame",
        "is_heartbeat",
        "payload",
        "received",
        "token",
    )

    def __init__(self, token: bytes, payload: bytes, received: float = 0.0) -> None:
        self.token = token
        self.payload = payload
        self.received = received  # time.monotonic() when it came from Redis
        self.is_heartbeat = False
        self._text: object = _UNSET
        self._sse: object = _UNSET
        self._chunk: object = _UNSET
        self._binary_frame: bytes | None = None
        self._text_frame: object = _UNSET

    @classmethod
    def heartbeat(cls, payload: bytes) -> Message:
        """A heartbeat: `ping:` for SSE with no payload (EventSource ignores the field)."""
        beat = cls(b"", payload)
        beat.is_heartbeat = True
        if not payload:
            beat._sse = b"ping:\n\n"
        return beat

    @classmethod
    def ping_frame(cls) -> Message:
        """The WebSocket heartbeat with no payload: an empty Ping control frame.

        Only a direct writer can send it (ASGI has no event for a ping), and it costs
        one write, where a server keep-alive ping costs two timers and a pong parse.
        """
        beat = cls.heartbeat(b"")
        beat._binary_frame = beat._text_frame = websocket_frame(OPCODE_PING, b"")
        return beat

    @property
    def text(self) -> str | None:
        """The payload as text, or None when it is not valid UTF-8."""
        if self._text is _UNSET:
            try:
                self._text = self.payload.decode()
            except UnicodeDecodeError:
                self._text = None
                logger.warning(
                    "message of %d bytes for token %r is not valid UTF-8: "
                    "not sent to SSE or text-frame clients",
                    len(self.payload),
                    self.token,
                )
        return self._text  # type: ignore[return-value]

    @property
    def sse(self) -> bytes | None:
        """The SSE event bytes, or None when the message has no SSE form."""
        if self._sse is _UNSET:
            self._sse = encode_sse(self.payload) if self.payload and self.text is not None else None
        return self._sse  # type: ignore[return-value]

    @property
    def sse_chunk(self) -> bytes | None:
        """The SSE event framed as one HTTP/1.1 chunk."""
        if self._chunk is _UNSET:
            event = self.sse
            self._chunk = None if event is None else b"%x\r\n%s\r\n" % (len(event), event)
        return self._chunk  # type: ignore[return-value]

    @property
    def binary_frame(self) -> bytes:
        """The payload as one unmasked binary WebSocket frame (what a server sends)."""
        if self._binary_frame is None:
            self._binary_frame = websocket_frame(OPCODE_BINARY, self.payload)
        return self._binary_frame

    @property
    def text_frame(self) -> bytes | None:
        """The payload as one text WebSocket frame, or None when it is not UTF-8."""
        if self._text_frame is _UNSET:
            valid = self.text is not None
            self._text_frame = websocket_frame(OPCODE_TEXT, self.payload) if valid else None
        return self._text_frame  # type: ignore[return-value]


OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_PING = 0x9


def websocket_frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked frame (RFC 6455 section 5.2)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


def encode_sse(payload: bytes) -> bytes:
    """Frame a message as the Go wspush does: one `data:` line per line, then a blank line.

    A line starting with a space gets `data: ` instead of `data:`: EventSource strips one
    leading space, so Go's form would lose it.
    """
    lines = payload.split(b"\n")
    return (
        b"".join(
            [
                b"data: " + line + b"\n" if line[:1] == b" " else b"data:" + line + b"\n"
                for line in lines
            ]
        )
        + b"\n"
    )


class TokenFull(Exception):
    """The token already has the maximum number of connections."""


class AtCapacity(Exception):
    """The process has its maximum number of connections."""


class PeerFull(Exception):
    """The client address already has its maximum number of connections."""


class Draining(Exception):
    """The relay is shutting down and takes no new connections."""


Encoder = Callable[[Message], "bytes | None"]


class Subscription:
    """One connection's place in the hub: its token, its bounded queue, and, when the
    server offers it, a direct writer.

    A message is written directly when the connection can take it and nothing is
    waiting before it; otherwise it waits in the queue, which the endpoint drains, and
    a message for a full queue is dropped. `None` in the queue tells the endpoint to
    close. Direct writes are batched: everything a connection gets while the Redis
    reader works through one read goes out in one write (see `WriteBatch`).
    """

    __slots__ = (
        "batch",
        "busy",
        "close_reason",
        "closing",
        "dropped",
        "encode",
        "expiry",
        "max_drops",
        "on_backlog",
        "peer",
        "pending",
        "queue",
        "stats",
        "token",
        "transport",
        "writer",
    )

    def __init__(
        self, token: bytes, transport: Transport, queue_size: int, stats: Stats, batch: WriteBatch
    ) -> None:
        self.token = token
        self.batch = batch
        self.pending: list[bytes] | None = None
        self.transport = transport
        self.stats = stats
        self.queue: LightQueue[Message | None] = LightQueue(queue_size)
        self.dropped = 0
        self.closing = False
        self.close_reason = GOING_AWAY  # what the endpoint says when it closes
        self.expiry: Entry | None = None  # the hub's timer entry, while a token expiry is due
        self.writer: DirectWriter | None = None
        self.encode: Encoder | None = None
        self.busy = False  # the endpoint holds messages taken from the queue
        self.on_backlog: Callable[[], None] | None = None
        self.peer = ""  # the client's address, for the per-address limit
        self.max_drops = 0  # disconnect after this many drops (0: never)

    def write_directly(
        self, writer: DirectWriter, encode: Encoder, on_backlog: Callable[[], None] | None = None
    ) -> None:
        """From now on, messages may skip the queue and go straight to `writer`.

        `on_backlog` is called whenever something is queued (a backlog, or the close),
        for endpoints that only run a sender while there is something to send.
        """
        self.encode = encode
        self.writer = writer
        self.on_backlog = on_backlog
        if on_backlog is not None and not self.queue.empty():
            on_backlog()  # what came before the connection was ready

    def deliver(self, message: Message) -> None:
        """Hand over one message without ever waiting (the hub's hot path)."""
        writer = self.writer
        if writer is not None and not self.busy and writer.ready() and self.queue.empty():
            data = self._encode(message)
            if data is None:
                return
            if self.pending is None:
                self.pending = [data]
                self.batch.add(self)
            else:
                self.pending.append(data)
        elif self.queue.full():
            self.dropped += 1
            self.stats.dropped_queue_full += 1
            if self.dropped == self.max_drops:
                self.kick()
        else:
            self.queue.put_nowait(message)
            if self.on_backlog is not None:
                self.on_backlog()

    def write(self, message: Message) -> None:
        """Encode for this connection and write it now (the endpoint's backlog path)."""
        data = self._encode(message)
        if data is not None:
            self.writer.write(data)  # type: ignore[union-attr]
            self.stats.bytes_sent += len(data)
            if not message.is_heartbeat:
                self.batch.latency.observe(time.monotonic() - message.received)

    def _encode(self, message: Message) -> bytes | None:
        """This connection's bytes for `message`, counted as delivered or skipped."""
        return counted(self.stats, message, self.encode(message))  # type: ignore[misc]

    def kick(self) -> None:
        """Disconnect a client that lost `max_drops` messages: it is not keeping up."""
        self.stats.slow_clients_disconnected += 1
        logger.info(
            "disconnecting a %s client of token %r: %d messages dropped, it does not read",
            self.transport.value,
            self.token,
            self.dropped,
        )
        if self.writer is not None:
            self.writer.kick(CLOSE_TOO_SLOW)
        else:
            self.close()

    def close(self, reason: CloseReason = GOING_AWAY) -> None:
        """Ask the endpoint to close, saying `reason`, making room in a full queue if
        needed (the first reason given is the one said)."""
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(None)
        if self.on_backlog is not None:
            self.on_backlog()


class WriteBatch:
    """Connections with direct writes pending, flushed once the current callback ends.

    The Redis reader handles every message of one socket read without yielding, so a
    flush scheduled with `call_soon` runs after the whole read: a connection that got
    several messages from it makes one system call instead of several. When messages
    trickle in one per read, this costs one callback and adds no waiting.
    """

    def __init__(self, latency: LatencyHistogram, stats: Stats) -> None:
        self._pending: list[Subscription] = []
        self._since = 0.0  # when the first write of this batch was queued
        self.latency = latency
        self.stats = stats

    def add(self, subscription: Subscription) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
            self._since = time.monotonic()
        self._pending.append(subscription)

    def flush(self) -> None:
        """Write what `deliver` collected for each connection, in one call each.

        The batch is one latency observation, weighted by the items written: they
        arrived in one Redis read and left together. Totals are kept in locals and
        added once, as this runs for every connection that got something.
        """
        pending, self._pending = self._pending, []
        items = sent = 0
        for subscription in pending:
            collected, subscription.pending = subscription.pending, None
            writer = subscription.writer
            if collected and writer is not None and writer.is_open():
                data = collected[0] if len(collected) == 1 else b"".join(collected)
                writer.write(data)
                items += len(collected)
                sent += len(data)
        self.stats.bytes_sent += sent
        if items:
            self.latency.observe(time.monotonic() - self._since, items)


T = TypeVar("T")


def counted(stats: Stats, message: Message, encoded: T | None) -> T | None:
    """Count one delivery of `message` in its encoded form, or, when there is none (the
    connection's format cannot carry it: empty for SSE, or not UTF-8), one skip."""
    if encoded is None:
        if message.payload:
            stats.skipped_invalid_utf8 += 1
        else:
            stats.skipped_empty += 1
    elif not message.is_heartbeat:
        stats.successful_deliveries += 1
    return encoded


class Hub:
    """Token -> subscriptions, with the connection limits: per token, per client
    address, and for the whole process."""

    def __init__(
        self,
        max_per_token: int,
        queue_size: int,
        stats: Stats,
        *,
        max_connections: int = 0,
        max_per_ip: int = 0,
        max_drops: int = 0,
        latency: LatencyHistogram | None = None,
    ) -> None:
        self.max_drops = max_drops
        self.max_per_token = max_per_token
        self.max_connections = max_connections  # 0: no limit
        self.max_per_ip = max_per_ip  # 0: no limit
        self._by_peer: dict[str, int] = {}
        self.queue_size = queue_size
        self.stats = stats
        self.draining = False
        self.drained = asyncio.Event()  # set once draining and the last connection left
        self.latency = LatencyHistogram() if latency is None else latency
        self.batch = WriteBatch(self.latency, stats)
        self._by_token: dict[bytes, list[Subscription]] = {}
        # Told of each token's first and last connection (exact subscribe mode).
        self.interest: Interest | None = None
        self.expiries: ExpiryTimer[Subscription] = ExpiryTimer(self._expired)

    def __len__(self) -> int:
        return self.stats.connections_open

    def tokens(self) -> int:
        return len(self._by_token)

    def subscriptions(self) -> Iterator[Subscription]:
        for subscriptions in list(self._by_token.values()):
            yield from subscriptions

    def subscribe(
        self, token: bytes, transport: Transport, peer: str = "", expires: float | None = None
    ) -> Subscription:
        """A place for one connection, or the limit it hits (checked widest first).

        With `expires` (a wall-clock time: the token's), the connection is closed then.
        """
        if self.draining:
            raise Draining
        if self.max_connections and self.stats.connections_open >= self.max_connections:
            raise AtCapacity
        if self.max_per_ip and self._by_peer.get(peer, 0) >= self.max_per_ip:
            raise PeerFull
        subscriptions = self._by_token.setdefault(token, [])
        if len(subscriptions) >= self.max_per_token:
            raise TokenFull
        subscription = Subscription(token, transport, self.queue_size, self.stats, self.batch)
        subscription.peer = peer
        subscription.max_drops = self.max_drops
        subscriptions.append(subscription)
        if len(subscriptions) == 1 and self.interest is not None:
            self.interest.first_client(token)
        self._by_peer[peer] = self._by_peer.get(peer, 0) + 1
        self._count_open(transport, 1)
        if expires is not None:
            subscription.expiry = self.expiries.add(expires, subscription)
        return subscription

    def _expired(self, subscription: Subscription) -> None:
        """A connection's token expired: close it, saying so."""
        subscription.expiry = None
        if subscription.closing:
            return
        self.stats.expired_clients_disconnected += 1
        logger.debug(
            "closing a %s client of token %r: its token expired",
            subscription.transport.value,
            subscription.token,
        )
        subscription.close(EXPIRED)

    def _count_open(self, transport: Transport, change: int) -> None:
        self.stats.connections_open += change
        if transport is Transport.SSE:
            self.stats.connections_open_sse += change
        else:
            self.stats.connections_open_ws += change

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a connection; safe to call more than once."""
        subscriptions = self._by_token.get(subscription.token)
        if subscriptions is None or subscription not in subscriptions:
            return
        subscriptions.remove(subscription)
        if subscription.expiry is not None:
            self.expiries.forget(subscription.expiry)
            subscription.expiry = None
        self._count_open(subscription.transport, -1)
        remaining = self._by_peer.pop(subscription.peer) - 1
        if remaining:
            self._by_peer[subscription.peer] = remaining
        if not subscriptions:
            del self._by_token[subscription.token]
            if self.interest is not None:
                self.interest.last_client(subscription.token)
            if self.draining and not self._by_token:
                self.drained.set()

    def publish(self, token: bytes, payload: bytes) -> None:
        """Queue a message for every connection of `token`; never blocks."""
        subscriptions = self._by_token.get(token)
        if subscriptions is None:
            return
        message = Message(token, payload, time.monotonic())
        for subscription in subscriptions:
            subscription.deliver(message)

    def shed(self, token: bytes, count: int = 1) -> None:
        """Count messages dropped before delivery because the relay is behind Redis:
        one lost delivery for each connection of their token."""
        subscriptions = self._by_token.get(token)
        if subscriptions is not None:
            self.stats.dropped_flood += len(subscriptions) * count

    def send_heartbeat(self, sse_beat: Message, ws_beat: Message) -> None:
        """A heartbeat for every connection whose queue has room (a busy one needs none).

        A WebSocket without a direct writer gets no ping frame: there, the server's own
        keep-alive pings (uvicorn's --ws-ping-interval) do that job.
        """
        for subscription in self.subscriptions():
            if subscription.transport is Transport.SSE:
                beat = sse_beat
            elif ws_beat.payload or subscription.writer is not None:
                beat = ws_beat
            else:
                continue
            if not subscription.queue.full():
                subscription.deliver(beat)
                self.stats.heartbeats_sent += 1

    async def run_heartbeats(self, interval: float, payload: bytes) -> None:
        """Every `interval` seconds, a heartbeat for all connections, from one timer.

        With a payload it is a message on both transports; without, an SSE `ping:` line
        and a WebSocket Ping frame.
        """
        sse_beat = Message.heartbeat(payload)
        ws_beat = Message.heartbeat(payload) if payload else Message.ping_frame()
        while True:
            await asyncio.sleep(interval)
            self.send_heartbeat(sse_beat, ws_beat)

    def close_all(self) -> None:
        """Stop taking connections and ask every open one to close."""
        self.draining = True
        self.expiries.close()
        if not self._by_token:
            self.drained.set()
        for subscription in self.subscriptions():
            subscription.close()
