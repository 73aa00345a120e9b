"""Per-token fan-out: the subscriber hands each message to the hub, and the hub to each
connection of its token.

A message goes straight to a connection's direct writer when it is ready and nothing
waits before it; otherwise into the connection's bounded queue, which one drain
(`Subscription.drain`) sends to the connection's `Sink`, whatever the server. Both ways
count the same things (deliveries, bytes, latency), here and nowhere else.

The hub never waits: a full queue loses the message (counted), so one slow client can
never delay the Redis reader or the other clients.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, TypeVar

from wspush.contract import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOO_SLOW,
    GOING_AWAY,
    CloseReason,
    DirectWriter,
    Sink,
)
from wspush.expiry import Entry, ExpiryTimer
from wspush.history import Position, open_envelope
from wspush.lightweight import LightQueue
from wspush.stats import LatencyHistogram, Stats
from wspush.wire import (
    OPCODE_BINARY,
    OPCODE_PING,
    OPCODE_TEXT,
    http_chunk,
    meta_frame_payload,
    sse_event,
    websocket_frame,
)

if TYPE_CHECKING:
    from wspush.interest import Interest

logger = logging.getLogger("wspush.hub")

_UNSET: object = object()
# The page learns why the stream ended, and fetches a fresh token before reconnecting
# (EventSource would retry with the expired one). An event needs data to be dispatched.
EXPIRED = CloseReason(
    CLOSE_POLICY_VIOLATION, "token expired", b"event: wspush-expired\ndata: token expired\n\n"
)


class Sequencer(Protocol):
    """What keeps connections in sequence with their tokens' histories (the hub's view
    of `wspush.resume.Resumer`)."""

    def in_sequence(self, subscription: Subscription, message: Message) -> bool:
        """Whether a live message with an id goes to the connection now."""

    def resubscribed(self, subscriptions: list[Subscription]) -> None:
        """The subscription to Redis is new: repair every connection in sequence."""


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
        "_meta",
        "_position",
        "_sse",
        "_text",
        "_text_frame",
        "id",
        "is_heartbeat",
        "payload",
        "previous",
        "received",
        "token",
    )

    def __init__(
        self,
        token: bytes,
        payload: bytes,
        received: float = 0.0,
        id: bytes | None = None,
        previous: bytes | None = None,
    ) -> None:
        self.token = token
        self.payload = payload
        self.received = received  # time.monotonic() when it came from Redis
        # Published with history (see wspush.history): its id, and the id before it.
        self.id = id
        self.previous = previous
        self.is_heartbeat = False  # not a published message: a heartbeat or a resume signal
        self._text: object = _UNSET
        self._sse: object = _UNSET
        self._chunk: object = _UNSET
        self._binary_frame: bytes | None = None
        self._text_frame: object = _UNSET
        self._meta: object = _UNSET
        self._position: object = _UNSET

    @classmethod
    def signal(cls, token: bytes, sse: bytes, meta: bytes) -> Message:
        """A resume signal (a position, a reset): its SSE event and its wspush.v1 frame
        payload; nothing in raw WebSocket frames, which cannot carry it."""
        signal = cls(token, b"")
        signal.is_heartbeat = True
        signal._sse = sse
        signal._meta = meta
        return signal

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
    def is_text(self) -> bool:
        """Whether the payload is valid UTF-8: SSE and text frames carry nothing else.

        An ASCII payload (most are) is valid without decoding it.
        """
        valid = self._text
        if valid is _UNSET:
            payload = self.payload
            valid = self._text = payload.isascii() or decodes_as_utf8(payload)
            if not valid:
                logger.warning(
                    "message of %d bytes for token %r is not valid UTF-8: "
                    "not sent to SSE or text-frame clients",
                    len(payload),
                    self.token,
                )
        return valid  # type: ignore[return-value]

    @property
    def sse(self) -> bytes | None:
        """The SSE event bytes, or None when the message has no SSE form."""
        if self._sse is _UNSET:
            if not self.payload or not self.is_text:
                self._sse = None
            elif self.id is None:
                self._sse = sse_event(self.payload)
            else:
                self._sse = b"id:" + self.id + b"\n" + sse_event(self.payload)
        return self._sse  # type: ignore[return-value]

    @property
    def position(self) -> Position | None:
        """Where the message stands in its token's history (None: no id, or not one)."""
        if self._position is _UNSET:
            self._position = None if self.id is None else Position.parse(self.id)
        return self._position  # type: ignore[return-value]

    @property
    def meta(self) -> bytes:
        """The payload in the wspush.v1 framing: `id: ID` when it has one, an empty line,
        then the payload (see `wspush.wire.meta_frame_payload`)."""
        if self._meta is _UNSET:
            self._meta = meta_frame_payload(self.payload, self.id)
        return self._meta  # type: ignore[return-value]

    @property
    def sse_chunk(self) -> bytes | None:
        """The SSE event framed as one HTTP/1.1 chunk."""
        if self._chunk is _UNSET:
            event = self.sse
            self._chunk = None if event is None else http_chunk(event)
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
            valid = self.is_text
            self._text_frame = websocket_frame(OPCODE_TEXT, self.payload) if valid else None
        return self._text_frame  # type: ignore[return-value]


def decodes_as_utf8(payload: bytes) -> bool:
    try:
        payload.decode()
    except UnicodeDecodeError:
        return False
    return True


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
    """One connection's place in the hub: its token, its bounded queue, and, once the
    endpoint attaches it, its `Sink`.

    A message is written directly when the sink's writer can take it and nothing is
    waiting before it; otherwise it waits in the queue, which `drain` sends, and a
    message for a full queue is dropped. `None` in the queue is the relay's close.
    Direct writes are batched: everything a connection gets while the Redis reader works
    through one read goes out in one write (see `WriteBatch`).
    """

    __slots__ = (
        "batch",
        "busy",
        "close_reason",
        "dropped",
        "encode",
        "expiry",
        "extra",
        "generation",
        "held",
        "history",
        "max_drops",
        "peer",
        "pending",
        "position",
        "queue",
        "signals",
        "sink",
        "stats",
        "task",
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
        self.close_reason: CloseReason | None = None  # why the relay closes it, once it does
        self.expiry: Entry | None = None  # the hub's timer entry, while a token expiry is due
        self.sink: Sink | None = None
        self.writer: DirectWriter | None = None  # the sink's, for the hot path
        self.encode: Encoder | None = None
        self.task: asyncio.Task[None] | None = None  # the drain, while a backlog waits
        self.busy = False  # the drain holds messages taken from the queue
        self.peer = ""  # the client's address, for the per-address limit
        self.max_drops = 0  # disconnect after this many drops (0: never)
        # With history (see wspush.resume): the resumer keeping this connection in
        # sequence, the id of the last message it was given, and the subscriber
        # generation that was live then; messages held while a repair reads history;
        # replayed messages waiting for the drain; whether the client's framing carries
        # resume signals (SSE, wspush.v1 WebSocket).
        self.history: Sequencer | None = None
        self.position: bytes | None = None
        self.generation = 0
        self.held: list[Message] | None = None
        self.extra: list[Message] | None = None
        self.signals = False

    @property
    def closing(self) -> bool:
        """The relay has asked this connection to close."""
        return self.close_reason is not None

    def attach(self, sink: Sink, encode: Encoder) -> None:
        """The connection is ready for messages: `encode` gives its bytes for each, and
        `sink` takes them (what waited before it first)."""
        self.encode = encode
        self.sink = sink
        self.writer = sink.writer
        if self.extra is not None and self._write_extra_now():
            return
        if not self.queue.empty() or self.extra is not None:
            self._start_drain()

    def deliver(self, message: Message) -> None:
        """Hand over one message without ever waiting (the hub's hot path)."""
        history = self.history
        if (
            message.id is not None
            and history is not None
            and not history.in_sequence(self, message)
        ):
            return
        writer = self.writer
        if writer is not None and not self.busy and writer.ready() and self.queue.empty():
            data = counted(self.stats, message, self.encode(message))  # type: ignore[misc]
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
            if self.sink is not None:
                self._start_drain()

    def give(self, messages: list[Message]) -> None:
        """Messages from history, to go out before anything delivered after them: what
        waits in the queue now goes first, then these, then what comes next."""
        if not messages or self.closing:
            return
        waiting: list[Message] = []
        while not self.queue.empty():
            queued = self.queue.get_nowait()
            if queued is not None:
                waiting.append(queued)
        self.extra = (self.extra or []) + waiting + messages
        self.busy = True  # nothing is written directly before these
        if self.sink is not None and not self._write_extra_now():
            self._start_drain()

    def _start_drain(self) -> None:
        """Make sure one task is draining the queue: a task only while a backlog waits,
        so an idle connection costs none."""
        task = self.task
        if task is None or task.done():
            self.task = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        """The one backlog loop: send what waits in the queue, in order, as the client
        takes it, counting what `deliver` counts for a direct write; on the relay's close
        (None in the queue), end the stream.

        Everything queued at once goes to the sink in one `send`: one write (or one SSE
        body chunk) for a backlog, however long.
        """
        queue = self.queue
        sink: Sink = self.sink  # type: ignore[assignment]
        try:
            while not queue.empty() or self.extra is not None:
                self.busy = True
                items: list[bytes] = []
                arrivals: list[float] = []  # when the messages of `items` came from Redis
                extra, self.extra = self.extra or [], None
                self._encode_into(extra, items, arrivals)
                waiting: list[Message] = []
                end = False
                while not queue.empty():
                    message = queue.get_nowait()
                    if message is None:
                        end = True
                        break
                    waiting.append(message)
                self._encode_into(waiting, items, arrivals)
                if items:
                    self.stats.bytes_sent += await sink.send(items)
                    self._observe(arrivals)
                if end:
                    await sink.end(self.close_reason or GOING_AWAY)
                    return
            self.busy = False
        except OSError:
            return  # the client went away mid-send

    def _encode_into(
        self, messages: list[Message], items: list[bytes], arrivals: list[float]
    ) -> None:
        """This connection's bytes for each message (counted), and when each came."""
        encode: Encoder = self.encode  # type: ignore[assignment]
        stats = self.stats
        for message in messages:
            data = counted(stats, message, encode(message))
            if data is not None:
                items.append(data)
                if not message.is_heartbeat:
                    arrivals.append(message.received)

    def _observe(self, arrivals: list[float]) -> None:
        now = time.monotonic()
        latency = self.batch.latency
        for arrival in arrivals:
            latency.observe(now - arrival)

    def _write_extra_now(self) -> bool:
        """Write the replayed messages at once, when the connection can take them and
        nothing is on its way before them: a resuming client needs no drain task."""
        writer = self.writer
        task = self.task
        if (
            writer is None
            or self.pending is not None  # direct writes not flushed yet go first
            or (task is not None and not task.done())
            or not self.queue.empty()
            or not writer.ready()
        ):
            return False
        extra, self.extra = self.extra or [], None
        items: list[bytes] = []
        arrivals: list[float] = []
        self._encode_into(extra, items, arrivals)
        if items:
            data = b"".join(items)
            writer.write(data)
            self.stats.bytes_sent += len(data)
            self._observe(arrivals)
        self.busy = False
        return True

    def kick(self) -> None:
        """Disconnect a client that lost `max_drops` messages: it is not keeping up."""
        self.stats.slow_clients_disconnected += 1
        logger.info(
            "disconnecting a %s client of token %r: %d messages dropped, it does not read",
            self.transport.value,
            self.token,
            self.dropped,
        )
        if self.sink is not None:
            self.sink.kick(CLOSE_TOO_SLOW)
        else:
            self.close()

    def close(self, reason: CloseReason = GOING_AWAY) -> None:
        """Ask the drain to end the stream, saying `reason` (the first one given), making
        room in a full queue if needed."""
        if self.close_reason is not None:
            return
        self.close_reason = reason
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(None)
        if self.sink is not None:
            self._start_drain()

    def detach(self) -> None:
        """The connection is gone: stop its drain (and any repair, which sees this)."""
        self.history = None
        self.held = self.extra = None
        task, self.task = self.task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()  # (the drain itself may end the stream and leave)


class WriteBatch:
    """Connections with direct writes pending, flushed once the current work is done.

    The Redis reader handles every message of one socket read in one go and then
    flushes (`hold`, then `flush`): a connection that got several messages from it makes
    one system call instead of several, and a read of one message adds no waiting.
    Other deliveries (heartbeats, replays) are flushed by a `call_soon` callback, after
    the callback that made them.
    """

    def __init__(self, latency: LatencyHistogram, stats: Stats) -> None:
        self._pending: list[Subscription] = []
        self._since = 0.0  # when the first write of this batch was queued
        self._held = False  # the caller flushes when it is done (see `hold`)
        self.latency = latency
        self.stats = stats

    def add(self, subscription: Subscription) -> None:
        if not self._pending:
            if not self._held:
                asyncio.get_running_loop().call_soon(self.flush)
            self._since = time.monotonic()
        self._pending.append(subscription)

    def hold(self) -> None:
        """The caller is about to deliver a Redis read's messages and will `flush` right
        after: no callback is scheduled for this batch."""
        self._held = True

    def flush(self) -> None:
        """Write what `deliver` collected for each connection, in one call each.

        The batch is one latency observation, weighted by the items written: they
        arrived in one Redis read and left together. Totals are kept in locals and
        added once, as this runs for every connection that got something.
        """
        self._held = False
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
        # Keeps connections in sequence with their token's history (--history-size).
        self.resumer: Sequencer | None = None

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
        """Forget a connection and stop its drain; safe to call more than once."""
        subscriptions = self._by_token.get(subscription.token)
        if subscriptions is None or subscription not in subscriptions:
            return
        subscriptions.remove(subscription)
        subscription.detach()
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

    def publish(self, token: bytes, payload: bytes, received: float | None = None) -> None:
        """Queue a message for every connection of `token`; never blocks.

        `received` is when it came from Redis (now, if not given): the subscriber reads
        the clock once per socket read, for every message of that read.
        A message published with history comes in an envelope (see `wspush.history`):
        its payload is delivered, with its id.
        """
        subscriptions = self._by_token.get(token)
        if subscriptions is None:
            return
        if received is None:
            received = time.monotonic()
        envelope = open_envelope(payload) if payload[:1] == b"\x00" else None
        if envelope is None:
            message = Message(token, payload, received)
        else:
            message = Message(token, envelope.payload, received, envelope.id, envelope.previous)
        for subscription in subscriptions:
            subscription.deliver(message)

    def resubscribed(self) -> None:
        """The Redis subscription is (back) up: what was published while it was down
        reaches every connection with a position (see `wspush.resume`)."""
        if self.resumer is not None:
            self.resumer.resubscribed(list(self.subscriptions()))

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
